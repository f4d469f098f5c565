"""Copy: reproduce the source (docs/paper.md, "Tasks": vocabulary 32, train 32-64,
eval 64-4096)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .api import register
from .seq2seq import SymbolSeq2Seq


@register("copy")
@dataclasses.dataclass(frozen=True)
class Copy(SymbolSeq2Seq):
    """Copy: the target equals the source, ``length`` uniform symbols from [0, vocab)."""

    def transform(self, src: np.ndarray) -> np.ndarray:
        return src
