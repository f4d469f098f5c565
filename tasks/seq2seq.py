"""The shared shape of copy, reverse and sort: uniform symbols in, a function of them out."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .base import Batch, Specials, Task, as_batch, check, seq2seq_arrays, seq2seq_parts


@dataclasses.dataclass(frozen=True)
class SymbolSeq2Seq(Task):
    """Source: ``length`` symbols drawn uniformly from [0, vocab); target: ``transform(source)``.
    Laid out ``[BOS] src [SEP] trg [EOS]`` (specials above the symbols), loss on trg and EOS."""

    vocab: int = 32

    def __post_init__(self):
        check(self.vocab >= 2, self.name, f"vocab={self.vocab} is too small; use vocab >= 2")

    @property
    def specials(self) -> Specials:
        return Specials(self.vocab)

    def transform(self, src: np.ndarray) -> np.ndarray:
        """The target rows for source rows (B, L)."""
        raise NotImplementedError

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        src = rng.integers(0, self.vocab, size=(batch_size, length))  # (B, L)
        tokens, targets = seq2seq_arrays(src, self.transform(src), self.specials)
        return as_batch(tokens, targets, length)

    def decode(self, batch: Batch, i: int) -> dict[str, Any]:
        source, target = seq2seq_parts(batch, i, self.specials)
        return {"source": source, "target": target}
