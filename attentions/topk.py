"""top-k softmax attention, an extra sparse baseline."""

from dataclasses import dataclass

from .api import register
from .base import Attention
from .normalizer import Normalizer


@dataclass(frozen=True)
class TopKConfig:
    k: int = 32

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k={self.k} must be at least 1")


@register("topk")
class TopK(Attention):
    """top-k softmax: softmax over the k largest scores of each row (ties at the k-th kept)."""

    Config = TopKConfig

    def normalizer(self) -> Normalizer:
        return Normalizer("topk", k=self.config.k)
