"""Reverse: the source backwards (docs/paper.md, "Tasks"; vocabulary 32, train 32-64)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .api import register
from .seq2seq import SymbolSeq2Seq


@register("reverse")
@dataclasses.dataclass(frozen=True)
class Reverse(SymbolSeq2Seq):
    """Reverse: the target is the source in reverse order.

    Evaluation ladder: the paper reports 64, 96 (1.5x), 128, 256 and 512; the ladder continues
    in powers of two to 4096 like the other tasks.
    """

    eval_lengths = (64, 96, 128, 256, 512, 1024, 2048, 4096)

    def transform(self, src: np.ndarray) -> np.ndarray:
        return src[:, ::-1]
