"""The shared shape of the language tasks (lm, niah): bytes of real text, byte tokens 0-255,
specials above them, lengths at multiples of a training length."""

from __future__ import annotations

import dataclasses

import numpy as np

from . import corpus
from .base import Specials, Task, check


@dataclasses.dataclass(frozen=True)
class TextTask(Task):
    """Byte-level task on ``corpus`` (or the file ``path``); evaluation lengths are
    ``train_length * 2**k`` up to ``max_multiple`` times it."""

    corpus: str = "shakespeare"
    path: str = ""
    train_length: int = 128  # type: ignore[assignment]
    max_multiple: int = 32
    holdout: float = 0.1

    def __post_init__(self):
        check(
            self.train_length >= 2 * self.min_length,
            self.name,
            f"train_length={self.train_length} is too short; "
            f"use train_length >= {2 * self.min_length}",
        )
        check(self.max_multiple >= 1, self.name, f"max_multiple={self.max_multiple} must be >= 1")
        corpus.check_source(self.name, self.corpus, self.path, self.holdout)

    @property
    def train_lengths(self) -> tuple[int, int]:  # type: ignore[override]
        return (self.train_length // 2, self.train_length)

    @property
    def eval_lengths(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(
            self.train_length * 2**k
            for k in range(self.max_multiple.bit_length())
            if 2**k <= self.max_multiple
        )

    @property
    def specials(self) -> Specials:
        return Specials(256)

    def text(self, split: str, need: int) -> np.ndarray:
        """The bytes of ``split``; fails unless it holds at least ``need`` of them."""
        data = corpus.part(self.corpus, self.path, self.holdout, split)
        if len(data) < need:
            raise self.fail(
                f"the {split} part of the text has {len(data)} bytes, fewer than the {need} a "
                f"sample of this length needs; use a longer text or a shorter length"
            )
        return data

    def starts(
        self, rng: np.random.Generator, data: np.ndarray, width: int, batch_size: int
    ) -> np.ndarray:
        return rng.integers(0, len(data) - width + 1, size=batch_size)
