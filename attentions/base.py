"""The attention module every variant is: a length scaling of q, then a normalized attention
computed by a kernel backend.

    y = attention_norm(scale(q, x), k, v; causal, bias)        # (B, H, T, D)

Variants subclass ``Attention``, declare a frozen ``Config`` dataclass of their spec keys, and
override ``normalizer()`` and, for a learned length scaling, ``length_scale``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from . import backends
from .normalizer import Normalizer
from .spec import SpecError, canonical, config_params


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """A variant without parameters."""


class Attention(nn.Module):
    Config: ClassVar[type] = NoConfig
    name: ClassVar[str] = ""

    def __init__(
        self,
        config: Any = None,
        *,
        n_heads: int,
        head_dim: int,
        d_model: int | None = None,
        backend: str = "auto",
        scaled_heads: Sequence[int] | None = None,
    ):
        super().__init__()
        self.config = config if config is not None else self.Config()
        if n_heads < 1 or head_dim < 1:
            raise SpecError(f"n_heads={n_heads} and head_dim={head_dim} must be positive")
        self.n_heads, self.head_dim = n_heads, head_dim
        self.d_model = d_model if d_model is not None else n_heads * head_dim
        if backend != "auto":
            backends.load(backend)  # unknown names fail here, with the known ones
        self.backend = backend
        heads = range(n_heads) if scaled_heads is None else sorted(set(scaled_heads))
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad:
            raise SpecError(f"scaled_heads {bad} outside 0..{n_heads - 1}")
        self.register_buffer("scaled_idx", torch.tensor(list(heads), dtype=torch.long), False)

    @property
    def n_scaled(self) -> int:
        return int(self.scaled_idx.numel())

    @property
    def spec(self) -> str:
        return canonical(self.name, config_params(self.config))

    def normalizer(self) -> Normalizer:
        raise NotImplementedError

    def length_scale(self, x: torch.Tensor | None, T: int) -> torch.Tensor | None:
        """The factor a learned length scaling multiplies the queries of the scaled heads by,
        (B or 1, H_s, T) for query positions 0..T-1 (``x``: the hidden states, (B, T, d_model)),
        or None: the default, a variant without one. ``scale_q`` applies it, and the
        evaluation reports it at the probed rows."""
        return None

    def scale_q(self, q: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The queries after the length scaling: ``length_scale`` spread over the heads."""
        T = q.shape[2]
        factor = self.length_scale(x, T)
        if factor is None:
            return q
        return q * self.head_factor(factor, factor.shape[0], T).to(q.dtype)[..., None]

    def head_factor(self, factor: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """Spread a per-scaled-head factor (B or 1, H_s, T) to all heads (ones elsewhere)."""
        if self.n_scaled == self.n_heads:
            return factor
        full = torch.ones(factor.shape[0], self.n_heads, T, dtype=factor.dtype,
                          device=factor.device)
        return full.index_copy(1, self.scaled_idx, factor)

    def forward(self, q, k, v, x=None, bias=None, causal: bool = True):
        """q, k, v: (B, H, T, D); x: (B, T, d_model) hidden states; -> (B, H, T, D)."""
        if q.dim() != 4 or q.shape[1] != self.n_heads:
            raise ValueError(f"q must be (B, {self.n_heads}, T, D); got {tuple(q.shape)}")
        q = self.scale_q(q, x)
        norm = self.normalizer()
        size = (*q.shape[:3], k.shape[2])  # (B, H, T, S)
        kernel = self._kernel(norm, q.device, bias, size)
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
        return kernel.attention(q, k, v, norm=norm, causal=causal, bias=bias, sm_scale=sm_scale)

    def _kernel(self, norm, device, bias, size):
        """The backend for this call. Resolution is Python bookkeeping (imports, caches) that a
        compiler should not trace: under ``torch.compile`` the choice of the last eager call is
        reused (the training step makes one eager call before it compiles)."""
        if torch.compiler.is_compiling():
            kernel = self.__dict__.get("_last_kernel")
            if kernel is not None:
                return kernel
        kernel = backends.resolve(self.backend, norm, device, bias, size)
        self.__dict__["_last_kernel"] = kernel
        return kernel

    def extra_repr(self) -> str:
        return f"{self.spec}, heads={self.n_heads}, backend={self.backend}"

    @classmethod
    def backends(cls) -> list[str]:
        """Backends usable here for this variant at its default parameters."""
        try:
            norm = cls(n_heads=1, head_dim=1).normalizer()
        except Exception:
            return ["torch"]
        out = []
        for name in backends.available():
            mod = backends.load(name)
            if any(mod.supports(norm, torch.device(d), None) for d in _devices()):
                out.append(name)
        return out


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def log_positions(T: int, offset: float, device, dtype) -> torch.Tensor:
    """log(i + offset) for 0-indexed positions i < T, shape (T,)."""
    return torch.log(torch.arange(T, device=device, dtype=dtype) + offset)
