"""The code a cell's result depends on, as short content hashes (part of its config hash).

- ``code.suite``: the installed suite's sources that change a result: every module of
  ``attentions`` (variants, normalizers, kernels of every backend) and ``tasks`` (generators,
  metrics), and the pipeline's ``model``, ``train``, ``step``, ``data``, ``evaluate`` and
  ``cpu`` (the pinned CPU numerics) and ``settings`` (the defaults of the settings that change
  a result). A hash of the files' bytes, the same for a git checkout
  and an installed wheel, clean or not; a change of any of them (a kernel fixed between two
  commits) is a new identity, a commit that touches none of them (the README) is not.
- ``code.attention`` / ``code.task``: ``builtin`` for a variant or task of the suite's own
  packages, else a hash of the bytes of the file that registered it (the ``--plugin`` file, or
  the module of an entry point), so that editing a plugin makes its cells new cells.

Hashes are read once per process, when first asked (the plan of a sweep): a file edited while a
sweep runs does not change the identity of the code that was loaded.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from pathlib import Path

import attentions
import tasks

#: the pipeline modules (besides the attentions and tasks packages) that change a result
PIPELINE = ("model.py", "train.py", "step.py", "data.py", "evaluate.py", "cpu.py", "settings.py")
BUILTIN = "builtin"
DIGITS = 12


def _digest(items) -> str:
    h = hashlib.sha256()
    for name, data in items:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:DIGITS]


def source_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(name, path) of every source file ``code.suite`` covers, sorted by name: those of the
    installed packages, or of the tree under ``root`` (holding attentions/, tasks/, suite/)."""
    def folder(pkg) -> Path:
        return root / pkg.__name__ if root else Path(pkg.__file__).resolve().parent

    found = []
    for pkg in (attentions, tasks):
        top = folder(pkg)
        found += [(f"{pkg.__name__}/{p.relative_to(top).as_posix()}", p)
                  for p in top.rglob("*.py") if "__pycache__" not in p.parts]
    here = root / "suite" if root else Path(__file__).resolve().parent
    found += [(f"suite/{name}", here / name) for name in PIPELINE]
    return sorted(found)


def tree_code(root: Path | None = None) -> str:
    """The hash of the sources ``source_files(root)`` lists."""
    return _digest((name, path.read_bytes()) for name, path in source_files(root))


@functools.cache
def suite_code() -> str:
    """``tree_code`` of the installed suite, read once per process."""
    return tree_code()


def _builtin(obj) -> bool:
    top = (getattr(obj, "__module__", "") or "").split(".")[0]
    return top in (attentions.__name__, tasks.__name__)


@functools.cache
def _file_code(path: str) -> str:
    return _digest([("plugin", Path(path).read_bytes())])


def registered_code(obj) -> str:
    """``builtin``, or the hash of the file whose import registered ``obj`` (a plugin)."""
    if _builtin(obj):
        return BUILTIN
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    path = getattr(module, "__file__", None)
    if path and Path(path).is_file():
        return _file_code(str(Path(path).resolve()))
    try:  # defined where there is no file (an interactive session): its own source
        return _digest([("source", inspect.getsource(obj).encode())])
    except (OSError, TypeError):
        raise attentions.SpecError(
            f"{getattr(obj, '__qualname__', obj)!r} was registered by code that has no "
            "source file, so its runs could not be told apart from those of edited code; "
            "put it in a file and load it with --plugin FILE") from None


def code_identity(attention: str, task: str) -> dict[str, str]:
    """The ``code.*`` entries of a cell's config, for its attention and task specs."""
    return {"code.suite": suite_code(),
            "code.attention": registered_code(attentions.get(attentions.parse_spec(attention)[0])),
            "code.task": registered_code(tasks.REGISTRY.get(tasks.get(task).name))}
