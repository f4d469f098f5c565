"""The plugins a worker process must import before it knows a sweep's cells: the files and
modules (loaded with ``--plugin`` or an entry point) that registered their attentions and tasks.
Shared by the local executor's worker pool and the Ray tasks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import attentions
import tasks

if TYPE_CHECKING:
    from ..train import Cell


def load_plugins(targets: list[str]) -> None:
    for target in targets:
        attentions.load_plugin(target)


def plugins_for(cells: list[Cell]) -> list[str]:
    """What a worker must import so that the cells' attentions and tasks are registered: the
    files and modules (loaded with --plugin) that registered them."""
    from attentions import REGISTRY as ATTENTIONS

    found: list[str] = []
    objs = [ATTENTIONS.get(attentions.parse_spec(c.attention)[0]) for c in cells]
    objs += [tasks.REGISTRY.get(tasks.get(c.task).name) for c in cells]
    for obj in objs:
        mod = getattr(obj, "__module__", "") or ""
        if mod.split(".")[0] in ("attentions", "tasks", "suite"):
            continue
        module = sys.modules.get(mod)
        target = getattr(module, "__file__", None) if mod.startswith("suite_plugin_") else mod
        if target and mod != "__main__" and target not in found:
            found.append(str(Path(target).resolve()) if target.endswith(".py") else target)
    return found
