"""Kernel backends. Each computes the same function,

    out_i = sum_j p_ij v_j,   p_i = normalizer(sm_scale * q_i . k_j + b_ij  over visible j),

for q (B, H, T, D), k and v (B, H, S, D). Causal: key j is visible to query i when
j <= i + (S - T) (queries aligned to the end of the keys). ``bias`` is None, a tensor
broadcastable to (B, H, T, S), or an ``Alibi``.

A backend module exposes ``NAME``, ``KINDS`` (the normalizer kinds it computes: an allow-list,
so a new kind is never sent into kernels written for another), ``usable() -> bool``
(importable and a device present here), ``supports(norm, device, bias) -> bool`` (False for a
kind outside ``KINDS``),
``attention(q, k, v, *, norm, causal, bias, sm_scale) -> (B, H, T, D)`` (differentiable), and
optionally ``preferred(norm, device, bias, size=None) -> bool``: whether ``auto`` should take
it for a call of shape ``size`` = (B, H, T, S) where it is supported but may be slower than
the next backend (numba on short rows, or on softmax without a bias, where SDPA wins).
Backends are imported lazily, so numba and triton are imported only when their backend is used.
"""

from __future__ import annotations

import importlib
from functools import cache

import torch

from ..normalizer import Normalizer

#: backend name -> module, in order of preference for ``auto``
MODULES = {
    "triton": "attentions.backends.triton_backend",
    "flex": "attentions.backends.flex_backend",
    "numba": "attentions.backends.numba_backend",
    "torch": "attentions.backends.torch_backend",
}
ORDER = ("triton", "flex", "numba", "torch")


@cache
def load(name: str):
    if name not in MODULES:
        from ..spec import unknown

        raise unknown("backend", name, [*MODULES, "auto"])
    try:
        return importlib.import_module(MODULES[name])
    except ImportError:
        return None


@cache
def usable(name: str) -> bool:
    mod = load(name)
    return bool(mod is not None and mod.usable())


def available() -> list[str]:
    """Backends usable on this machine, in order of preference."""
    return [b for b in ORDER if usable(b)]


def resolve(name: str, norm: Normalizer, device: torch.device, bias=None, size=None):
    """The backend module to run ``norm`` on ``device``; ``auto`` takes the first that fits
    (and prefers itself for a call of shape ``size`` = (B, H, T, S), when given)."""
    if name == "auto":
        for cand in ORDER:
            mod = load(cand) if usable(cand) else None
            if mod is None:
                continue
            if hasattr(mod, "preferred"):
                ok = mod.preferred(norm, device, bias, **({"size": size} if size else {}))
            else:
                ok = mod.supports(norm, device, bias)
            if ok:
                return mod
        raise RuntimeError(f"no backend supports {norm} on {device}: a normalizer kind "
                           "that no backend's KINDS names")  # torch takes every kind there is
    mod = load(name)
    if mod is None or not mod.usable():
        raise RuntimeError(
            f"backend {name!r} is not usable on this machine (usable: {', '.join(available())}); "
            "use backend='auto' or one of those"
        )
    if not mod.supports(norm, device, bias):
        raise RuntimeError(
            f"backend {name!r} does not support {norm} on {device.type} with this bias; "
            "use backend='torch' (every kind, any bias) or 'auto'"
        )
    return mod
