"""sparsemax attention (alpha-entmax at alpha = 2)."""

from .api import register
from .base import Attention
from .normalizer import Normalizer


@register("sparsemax")
class Sparsemax(Attention):
    """sparsemax: the Euclidean projection of z_i onto the simplex, p_ij = [z_ij - tau_i]_+."""

    def normalizer(self) -> Normalizer:
        return Normalizer("entmax", alpha=2.0)
