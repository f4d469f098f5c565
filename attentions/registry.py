"""A registry: one dict behind a decorator, with did-you-mean errors and plugin loading.

Shared by ``attentions`` and ``tasks``, which find their built-ins with ``import_modules``.
Names are refused twice; third-party entries arrive from a file or module (``load_plugin``) or
from an entry-point group, read once on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from .spec import SpecError, unknown

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind
        self.group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
            raise SpecError(
                f"bad {self.kind} name {name!r}: use letters, digits and '_' (no ':' ',' '=')"
            )
        if name in self._items and self._items[name] is not obj:
            raise SpecError(
                f"{self.kind} {name!r} is registered already (by {_where(self._items[name])}); "
                "pick another name"
            )
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                ep.load()
            except Exception as err:  # a broken plugin must say which one it is
                raise SpecError(
                    f"entry point {ep.name!r} ({ep.value}) in group {self.group!r} failed to "
                    f"load: {err}"
                ) from err

    def get(self, name: str) -> T:
        self._load_entry_points()
        if name not in self._items:
            raise unknown(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def load_plugin(target: str) -> Any:
    """Import a plugin: a ``.py`` file path or a dotted module name. Importing registers."""
    path = Path(target)
    if target.endswith(".py") or path.exists():
        if not path.is_file():
            raise SpecError(f"plugin file {target!r} does not exist")
        mod_name = f"suite_plugin_{abs(hash(str(path.resolve())))}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except SpecError:
            del sys.modules[mod_name]
            raise
        except Exception as err:
            del sys.modules[mod_name]
            raise SpecError(f"plugin {target!r} failed to import: {_located(err, path)}; "
                            "fix the file (try `python FILE`) and run again") from err
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and not target.startswith(err.name) and err.name != target:
            raise SpecError(f"plugin {target!r} failed to import: {_located(err)}; install "
                            f"what it needs (pip install {err.name.split('.')[0]})") from err
        raise SpecError(
            f"plugin {target!r} is neither a .py file nor an importable module ({err})"
        ) from err
    except SpecError:
        raise
    except Exception as err:
        raise SpecError(f"plugin {target!r} failed to import: {_located(err)}; fix the module "
                        "and run again") from err


def _located(err: BaseException, path: Path | None = None) -> str:
    """``ErrorType: message (file, line N)``, the line inside the plugin where it can be told."""
    import traceback

    where = ""
    if isinstance(err, SyntaxError) and err.lineno:
        where = f" ({Path(err.filename or str(path)).name}, line {err.lineno})"
        msg = err.msg
    else:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        frames = traceback.extract_tb(err.__traceback__)
        mine = [f for f in frames if path is None or Path(f.filename) == path.resolve()
                or Path(f.filename) == path]
        if mine:
            where = f" ({Path(mine[-1].filename).name}, line {mine[-1].lineno})"
    return f"{type(err).__name__}: {msg}{where}"


def import_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of a package (not its subpackages, nor names starting with "_"),
    so that a built-in entry is one file that registers itself on import."""
    for info in pkgutil.iter_modules(path):
        if not info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
