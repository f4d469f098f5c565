"""Sort: the source in ascending order (docs/paper.md, "Tasks"; vocabulary 32, train 32-64)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .api import register
from .seq2seq import SymbolSeq2Seq


@register("sort")
@dataclasses.dataclass(frozen=True)
class Sort(SymbolSeq2Seq):
    """Sort: the target is the source sorted ascending (the paper's table stops at 512; the
    released recipe, and this ladder, go to 4096)."""

    def transform(self, src: np.ndarray) -> np.ndarray:
        return np.sort(src, axis=1)
