"""2Back: label each token with the token two positions earlier (docs/paper.md, "Tasks")."""

from __future__ import annotations

import dataclasses

import numpy as np

from .api import register
from .base import Batch, as_batch, check
from .classify import TokenClassification

BACK = 2


@register("two_back")
@dataclasses.dataclass(frozen=True)
class TwoBack(TokenClassification):
    """2Back (N-back with N = 2): the source is 0 followed by ``length - 1`` symbols drawn
    uniformly from [1, vocab); the label at position t is the token at t - 2, and 0 for the
    first two positions. Vocabulary 16, training lengths 32-64, evaluation 64-4096.

    ``length`` counts the leading 0 (the official generator adds it on top of ``length``).
    """

    min_length = BACK + 1

    def __post_init__(self):
        check(self.vocab >= 2, "two_back", f"vocab={self.vocab} must be >= 2")

    @property
    def labels(self) -> int:
        return self.vocab

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        tokens = np.zeros((batch_size, length), dtype=np.int64)  # (B, L)
        tokens[:, 1:] = rng.integers(1, self.vocab, size=(batch_size, length - 1))
        labels = np.zeros_like(tokens)  # (B, L)
        labels[:, BACK:] = tokens[:, :-BACK]
        return as_batch(tokens, labels, length)
