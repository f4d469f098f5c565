"""Spec strings: ``name:key=value,key=value``.

One parser and one canonical form for every registry in the suite (attentions and tasks).
The canonical form sorts keys, drops keys equal to their default, and normalizes numbers
(``1.50`` -> ``1.5``, ``2.0`` -> ``2``, ``1e-3`` -> ``0.001``). It is the CLI argument, the
MLflow run-name component and the leaderboard row label.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any


class SpecError(ValueError):
    """A spec string, name or parameter that the registry cannot accept."""


def closest(word: str, known: Iterable[str]) -> list[str]:
    """All of ``known``, the closest to ``word`` first (ties alphabetical)."""
    return sorted(known, key=lambda k: (-difflib.SequenceMatcher(None, word, k).ratio(), k))


def unknown(what: str, word: str, known: Iterable[str], hint: str = "", of: str = "") -> SpecError:
    """The error for an unknown name or key: lists the known ones, closest first."""
    known = list(known)
    ranked = closest(word, known)
    near = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    guess = f" Did you mean {near[0]!r}?" if near else ""
    listing = ", ".join(ranked) if ranked else "(none)"
    where = f" of {of}" if of else ""
    return SpecError(f"unknown {what} {word!r}{where}.{guess} Known: {listing}.{hint}")


def format_value(value: Any) -> str:
    """The canonical text of one parameter value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    if isinstance(value, (tuple, list)):
        return "/".join(format_value(v) for v in value)
    return str(value)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``name:k=v,k=v`` into the name and the raw (string) parameters."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty spec {spec!r}: write a name, e.g. 'entmax' or 'entmax:alpha=1.5'")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    params: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key or not value:
                raise SpecError(
                    f"bad parameter {item!r} in spec {spec!r}: write key=value, "
                    "e.g. 'entmax:alpha=1.5'"
                )
            if key in params:
                raise SpecError(f"parameter {key!r} given twice in spec {spec!r}")
            params[key] = value
    return name, params


def _convert(raw: Any, typ: Any, key: str, owner: str) -> Any:
    if not isinstance(raw, str):
        if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return raw
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if typ is int:
            value = float(raw)
            if value != int(value):
                raise ValueError(raw)
            return int(value)
        if typ is float:
            return float(raw)
        if typing.get_origin(typ) is typing.Literal:
            if raw not in typing.get_args(typ):
                raise ValueError(raw)
            return raw
        return typ(raw)
    except ValueError:
        wanted = getattr(typ, "__name__", str(typ))
        if typing.get_origin(typ) is typing.Literal:
            wanted = "one of " + ", ".join(map(str, typing.get_args(typ)))
        raise SpecError(f"{owner}: parameter {key}={raw!r} is not a valid {wanted}") from None


def make_config(config_cls: type, params: Mapping[str, Any], owner: str) -> Any:
    """Build the frozen config dataclass ``config_cls`` from raw or typed parameters.

    Unknown keys fail with the known ones listed; values are converted by the field types;
    the dataclass's ``__post_init__`` checks ranges and raises ``SpecError`` for bad values.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for key, raw in params.items():
        if key not in fields:
            raise unknown("parameter", key, fields, of=owner)
        kwargs[key] = _convert(raw, hints[key], key, owner)
    try:
        return config_cls(**kwargs)
    except SpecError:
        raise
    except (TypeError, ValueError) as err:
        raise SpecError(f"{owner}: {err}") from None


def config_params(config: Any) -> dict[str, Any]:
    """The parameters of a config that differ from their defaults."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if value != default:
            out[f.name] = value
    return out


def canonical(name: str, params: Mapping[str, Any]) -> str:
    """``name`` plus the sorted, normalized parameters (empty parameters: the bare name)."""
    if not params:
        return name
    body = ",".join(f"{k}={format_value(params[k])}" for k in sorted(params))
    return f"{name}:{body}"
