"""alpha-entmax attention."""

from dataclasses import dataclass

from .api import register
from .base import Attention
from .normalizer import Normalizer


@dataclass(frozen=True)
class EntmaxConfig:
    alpha: float = 1.5

    def __post_init__(self):
        if not 1.0 < self.alpha <= 2.0:
            raise ValueError(
                f"alpha={self.alpha} is outside (1, 2]; alpha = 1 is softmax (use 'softmax'), "
                "alpha = 2 is sparsemax"
            )


@register("entmax")
class Entmax(Attention):
    """alpha-entmax: p_ij = [(alpha-1) z_ij - tau_i]_+^(1/(alpha-1)), exact zeros (alpha 1.5)."""

    Config = EntmaxConfig

    def normalizer(self) -> Normalizer:
        return Normalizer("entmax", alpha=self.config.alpha)
