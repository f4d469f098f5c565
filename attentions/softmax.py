"""softmax attention."""

from .api import register
from .base import Attention
from .normalizer import Normalizer


@register("softmax")
class Softmax(Attention):
    """softmax: p_ij = exp(z_ij) / sum_l exp(z_il), z_ij = q_i.k_j / sqrt(d) + b_ij (dense)."""

    def normalizer(self) -> Normalizer:
        return Normalizer("softmax")
