"""LocalCount: the index of each token inside its block of repeats (docs/paper.md, "Tasks")."""

from __future__ import annotations

import dataclasses

import numpy as np

from .api import register
from .base import Batch, as_batch, check
from .classify import TokenClassification


@register("local_count")
@dataclasses.dataclass(frozen=True)
class LocalCount(TokenClassification):
    """LocalCount: blocks of one repeated symbol from [0, vocab), no two adjacent blocks
    sharing a symbol, each block r ~ U{2, ..., max_reps} long; the label of each token is its
    0-based index inside its block (labels 0 .. max_reps - 1).

    Defaults as the paper: vocabulary 16, max_reps 48, training lengths 64-128 (so the ID length
    is 128), evaluation 64-4096. The official generator draws floor(length / ((max_reps + 2) / 2))
    blocks, so its length only averages ``length``; here blocks are drawn until ``length`` tokens
    are filled and the last block is cut there, so every sample has exactly ``length`` tokens.
    """

    max_reps: int = 48
    train_lengths = (64, 128)

    def __post_init__(self):
        check(
            self.vocab >= 2,
            "local_count",
            f"vocab={self.vocab} must be >= 2 (adjacent blocks differ)",
        )
        check(self.max_reps >= 2, "local_count", f"max_reps={self.max_reps} must be >= 2")

    @property
    def labels(self) -> int:
        return self.max_reps

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        blocks = length // 2 + 1  # enough blocks of length >= 2 to fill the row
        reps = rng.integers(2, self.max_reps + 1, size=(batch_size, blocks))  # (B, N)
        steps = rng.integers(1, self.vocab, size=(batch_size, blocks))  # (B, N): never 0 mod vocab
        steps[:, 0] = rng.integers(0, self.vocab, size=batch_size)
        symbols = np.cumsum(steps, axis=1) % self.vocab  # (B, N): adjacent blocks differ
        ends = np.cumsum(reps, axis=1)  # (B, N)
        pos = np.arange(length)
        which = np.stack([np.searchsorted(e, pos, side="right") for e in ends])  # (B, L)
        starts = np.take_along_axis(ends - reps, which, axis=1)  # (B, L)
        tokens = np.take_along_axis(symbols, which, axis=1)  # (B, L)
        return as_batch(tokens, pos[None, :] - starts, length)
