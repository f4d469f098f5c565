"""The attention registry and its public functions (re-exported by ``attentions``)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .base import Attention
from .registry import Registry, load_plugin  # noqa: F401  (re-exported)
from .spec import SpecError, canonical, config_params, make_config, parse_spec

REGISTRY: Registry[type[Attention]] = Registry("attention", "suite.attentions")


def register(name: str) -> Callable:
    """Register an ``Attention`` subclass, or a plain function
    ``f(q, k, v, *, causal, bias, **params)`` whose keyword-only defaults become spec keys."""

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
    for needed in ("causal", "bias"):
        if needed not in sig.parameters:
            raise SpecError(
                f"attention function {name!r} must take keyword-only '{needed}': "
                "def f(q, k, v, *, causal, bias, **params)"
            )
    config_cls = dataclasses.make_dataclass(f"{name}_config", fields, frozen=True)

    class FunctionAttention(Attention):
        __doc__ = fn.__doc__
        Config = config_cls

        def forward(self, q, k, v, x=None, bias=None, causal: bool = True):
            return fn(q, k, v, causal=causal, bias=bias, **dataclasses.asdict(self.config))

        @classmethod
        def backends(cls) -> list[str]:
            return ["torch"]

    FunctionAttention.name = name
    FunctionAttention.__qualname__ = FunctionAttention.__name__ = f"{fn.__name__}_attention"
    FunctionAttention.__module__ = fn.__module__
    return FunctionAttention


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
