"""Which row normalizer an attention applies, as a value the kernels dispatch on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KINDS = ("softmax", "entmax", "topk")


def check_alpha(alpha: float) -> None:
    """The entmax alpha range, (1, 2]: a ValueError that names the fix otherwise."""
    if not 1.0 < alpha <= 2.0:
        raise ValueError(f"alpha={alpha} is outside (1, 2]; alpha = 1 is softmax (use "
                         "'softmax'), alpha = 2 is sparsemax")


@dataclass(frozen=True)
class Normalizer:
    """``softmax``; ``entmax`` with ``alpha`` in (1, 2] (2 is sparsemax); ``topk`` softmax over
    the ``k`` largest scores of each row (all of them where a row has fewer)."""

    kind: Literal["softmax", "entmax", "topk"]
    alpha: float = 1.5
    k: int = 32

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown normalizer kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind == "entmax":
            check_alpha(self.alpha)
        if self.kind == "topk" and self.k < 1:
            raise ValueError(f"k={self.k} must be at least 1")


@dataclass(frozen=True)
class Alibi:
    """ALiBi as a compact score bias: b_ij = -slope_h * |i' - j| with i' the query's absolute
    position (queries are aligned to the end of the keys). Kernels build tiles on the fly, so no
    (T, S) tensor ever exists. Heads with slope 0 are NoPE heads."""

    slopes: torch.Tensor  # (H,)

    def tile(self, i0: int, i1: int, j0: int, j1: int, offset: int, device, dtype) -> torch.Tensor:
        """The bias block for queries i0:i1 and keys j0:j1, shape (1, H, i1-i0, j1-j0)."""
        qi = torch.arange(i0, i1, device=device, dtype=dtype) + offset
        kj = torch.arange(j0, j1, device=device, dtype=dtype)
        dist = (qi[:, None] - kj[None, :]).abs()  # (Tq, Sk)
        return -self.slopes.to(device=device, dtype=dtype)[None, :, None, None] * dist

    def dense(self, T: int, S: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The whole (1, H, T, S) bias, for plain-function variants at modest sizes."""
        return self.tile(0, T, 0, S, S - T, device, dtype)


def nape_slopes(n_heads: int, n_alibi: int | None = None, kind: str = "linear") -> torch.Tensor:
    """NAPE slopes: the first ``n_alibi`` (default H // 2) heads ALiBi, the rest NoPE (slope 0).
    ``linear``: m_h = 1/h (h 1-indexed, the official code's default); ``exp``: 2^-(h-1)."""
    n_alibi = n_heads // 2 if n_alibi is None else n_alibi
    h = torch.arange(1, n_alibi + 1, dtype=torch.float64)
    head = 1.0 / h if kind == "linear" else 2.0 ** (-(h - 1))
    return torch.cat([head, torch.zeros(n_heads - n_alibi, dtype=torch.float64)]).float()
