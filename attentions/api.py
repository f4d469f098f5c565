"""The attention registry and its public functions (re-exported by ``attentions``)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .base import Attention
from .normalizer import Alibi
from .registry import Registry, load_plugin  # noqa: F401  (re-exported)
from .spec import SpecError, canonical, config_params, make_config, parse_spec

REGISTRY: Registry[type[Attention]] = Registry("attention", "suite.attentions")


def register(name: str) -> Callable:
    """Register an ``Attention`` subclass, or a plain function
    ``f(q, k, v, *, causal, bias, **params)`` whose keyword-only defaults become spec keys.

    A class gets ``bias`` in the compact form the kernels build tiles from (``Alibi``); a plain
    function gets a tensor it can add to its scores, broadcastable to (B, H, T, S), or None
    (no position bias). A function without a ``bias`` parameter is given none, and so sees no
    ALiBi heads under the ``alibi`` and ``nape`` position encodings. Its output is checked on
    the first call: (B, H, T, D), as q, k and v are."""

    def deco(obj):
        if inspect.isclass(obj):
            if not issubclass(obj, Attention):
                raise SpecError(
                    f"{obj.__qualname__} must subclass attentions.Attention to be registered "
                    "(or register a plain function f(q, k, v, *, causal, bias, **params))"
                )
            obj.name = name
            REGISTRY.register(name, obj)
        elif callable(obj):
            REGISTRY.register(name, _wrap_function(name, obj))
        else:
            raise SpecError(f"cannot register {obj!r}: give a class or a function")
        return obj

    return deco


def _wrap_function(name: str, fn: Callable) -> type[Attention]:
    sig = inspect.signature(fn)
    fields = []
    for p in sig.parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in ("causal", "bias"):
            continue
        if p.default is p.empty:
            raise SpecError(f"attention function {name!r}: parameter {p.name!r} needs a default")
        typ = p.annotation if p.annotation is not p.empty else type(p.default)
        fields.append((p.name, typ, dataclasses.field(default=p.default)))
    if "causal" not in sig.parameters:
        raise SpecError(
            f"attention function {name!r} must take keyword-only 'causal': "
            "def f(q, k, v, *, causal, bias, **params)"
        )
    wants_bias = "bias" in sig.parameters
    config_cls = dataclasses.make_dataclass(f"{name}_config", fields, frozen=True)

    class FunctionAttention(Attention):
        __doc__ = fn.__doc__
        Config = config_cls

        def forward(self, q, k, v, x=None, bias=None, causal: bool = True):
            params = dataclasses.asdict(self.config)
            if wants_bias:  # a tensor it can add to its scores, built only when asked for
                if isinstance(bias, Alibi):
                    bias = bias.dense(q.shape[2], k.shape[2], q.device, q.dtype)  # (1,H,T,S)
                params["bias"] = bias
            y = fn(q, k, v, causal=causal, **params)
            if not self._output_checked:
                check_output(name, y, q, v)
                self._output_checked = True
            return y

        @classmethod
        def backends(cls) -> list[str]:
            return ["torch"]

    FunctionAttention.name = name
    FunctionAttention._output_checked = False
    FunctionAttention.__qualname__ = FunctionAttention.__name__ = f"{fn.__name__}_attention"
    FunctionAttention.__module__ = fn.__module__
    return FunctionAttention


def check_output(name: str, y, q, v) -> None:
    """A plain function must return a (B, H, T, D) tensor: q's batch, heads and length, v's
    head dim. The usual slips (a (B, T, H, D) layout, heads concatenated, a doubled head dim)
    are named with their fix."""
    import torch

    B, H, T, _ = q.shape
    want = (B, H, T, v.shape[-1])
    if not isinstance(y, torch.Tensor):
        raise SpecError(f"attention function {name!r} returned {type(y).__name__}, not a "
                        f"tensor of shape (B, H, T, D) = {want}")
    got = tuple(y.shape)
    if got == want:
        if not y.is_floating_point():
            raise SpecError(f"attention function {name!r} returned a {y.dtype} tensor; "
                            "return floating-point values (e.g. weights @ v)")
        return
    hint = "return weights @ v, shape (B, H, T, D), with q, k, v as given: (B, H, T, D)"
    if got == (B, T, H, v.shape[-1]) and H != T:
        hint = "it is laid out (B, T, H, D): return y.transpose(1, 2)"
    elif len(got) == 3 and got == (B, T, H * v.shape[-1]):
        hint = "the heads are merged into (B, T, H*D): keep them apart, shape (B, H, T, D)"
    elif len(got) == 4 and got[:3] == want[:3]:
        hint = f"its last dim is {got[-1]}, not v's head dim {want[-1]}: return weights @ v"
    raise SpecError(f"attention function {name!r} returned shape {got}, expected "
                    f"(B, H, T, D) = {want}; {hint}")


def names() -> list[str]:
    """The registered variant names."""
    return REGISTRY.names()


def get(name: str) -> type[Attention]:
    return REGISTRY.get(name)


def config(spec: str) -> tuple[type[Attention], Any]:
    """The variant class and its validated config for a spec string."""
    name, raw = parse_spec(spec)
    cls = REGISTRY.get(name)
    return cls, make_config(cls.Config, raw, f"attention {name!r}")


def canonical_spec(spec: str) -> str:
    """The one canonical form of a spec: sorted keys, defaults dropped, numbers normalized."""
    cls, cfg = config(spec)
    return canonical(cls.name, config_params(cfg))


def build(
    spec: str,
    *,
    n_heads: int,
    head_dim: int,
    d_model: int | None = None,
    backend: str = "auto",
    scaled_heads: Sequence[int] | None = None,
) -> Attention:
    """Build the attention module for ``spec`` (e.g. ``"asentmax:alpha=1.5"``)."""
    cls, cfg = config(spec)
    return cls(cfg, n_heads=n_heads, head_dim=head_dim, d_model=d_model, backend=backend,
               scaled_heads=scaled_heads)


def backends(name: str) -> list[str]:
    """Backends of a variant usable on this machine, fastest first."""
    return REGISTRY.get(parse_spec(name)[0]).backends()


def describe(name: str) -> str:
    """The first line of a variant's docstring."""
    doc = inspect.getdoc(REGISTRY.get(name)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
