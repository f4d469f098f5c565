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
    """LocalCount: a start marker (symbol 0, a block of one, label 0), then blocks of one
    repeated symbol from [1, vocab), no two adjacent blocks sharing a symbol, each block
    r ~ U{2, ..., max_reps} long; the label of each token is its 0-based index inside its block
    (labels 0 .. max_reps - 1).

    Defaults as the paper: vocabulary 16, max_reps 48, training lengths 64-128 (so the ID length
    is 128), evaluation 64-4096. The official generator draws floor(length / ((max_reps + 2) / 2))
    blocks, so its length only averages ``length``; here blocks are drawn until ``length`` tokens
    are filled and the last block is cut there, so every sample has exactly ``length`` tokens
    (the marker included).

    Version 2 adds the marker. Without it (version 1, and the task as the paper describes it),
    the first block cannot be counted by any model whose only position signal is relative
    (NAPE, ALiBi, RoPE, NoPE): every position of the first block holds the same token after
    the same (identical) tokens, so each layer computes the same vector at all of them, and
    the model gives the whole block one label. That costs one block's worth of tokens per
    sequence (25 on average) and made exact match 0 at every length for every attention (the
    reference runs of 2026-12-05; tests/test_tasks.py shows the identical outputs).
    """

    max_reps: int = 48
    train_lengths = (64, 128)
    version = 2
    min_length = 2

    def __post_init__(self):
        check(
            self.vocab >= 3,
            "local_count",
            f"vocab={self.vocab} must be >= 3 (symbol 0 is the start marker; adjacent blocks "
            "differ)",
        )
        check(self.max_reps >= 2, "local_count", f"max_reps={self.max_reps} must be >= 2")

    @property
    def labels(self) -> int:
        return self.max_reps

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        n = length - 1  # the blocks after the marker
        blocks = n // 2 + 1  # enough blocks of length >= 2 to fill the row
        reps = rng.integers(2, self.max_reps + 1, size=(batch_size, blocks))  # (B, N)
        # steps between adjacent blocks' symbols are never 0 mod (vocab - 1): adjacent blocks
        # differ; the symbols lie in [1, vocab), 0 being the marker
        steps = rng.integers(1, self.vocab - 1, size=(batch_size, blocks))  # (B, N)
        steps[:, 0] = rng.integers(0, self.vocab - 1, size=batch_size)
        symbols = 1 + np.cumsum(steps, axis=1) % (self.vocab - 1)  # (B, N)
        ends = np.cumsum(reps, axis=1)  # (B, N)
        pos = np.arange(n)
        which = np.stack([np.searchsorted(e, pos, side="right") for e in ends])  # (B, n)
        starts = np.take_along_axis(ends - reps, which, axis=1)  # (B, n)
        tokens = np.zeros((batch_size, length), dtype=np.int64)  # (B, L): the marker at 0
        labels = np.zeros_like(tokens)  # (B, L)
        tokens[:, 1:] = np.take_along_axis(symbols, which, axis=1)
        labels[:, 1:] = pos[None, :] - starts
        return as_batch(tokens, labels, length)
