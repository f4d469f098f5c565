"""alpha-entmax attention."""

from dataclasses import dataclass

from .api import register
from .base import Attention
from .normalizer import Normalizer, check_alpha


@dataclass(frozen=True)
class EntmaxConfig:
    alpha: float = 1.5

    def __post_init__(self):
        check_alpha(self.alpha)


@register("entmax")
class Entmax(Attention):
    """alpha-entmax: p_ij = [(alpha-1) z_ij - tau_i]_+^(1/(alpha-1)), exact zeros (alpha 1.5)."""

    Config = EntmaxConfig

    def normalizer(self) -> Normalizer:
        return Normalizer("entmax", alpha=self.config.alpha)
