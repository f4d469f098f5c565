"""The task registry and its public functions (re-exported by ``tasks``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attentions.registry import Registry
from attentions.registry import load_plugin as _load_plugin
from attentions.spec import SpecError, make_config, parse_spec

from .base import Task

REGISTRY: Registry[type[Task]] = Registry("task", "suite.tasks")


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a frozen-dataclass task class under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise SpecError(f"task {name!r}: register a subclass of tasks.Task, got {cls!r}")
        cls.name = name
        REGISTRY.register(name, cls)
        return cls

    return deco


def get(spec: str) -> Task:
    """The task for a spec string such as ``mqmtar`` or ``flip_flop:p_write=0.8``."""
    name, params = parse_spec(spec)
    return make_config(REGISTRY.get(name), params, owner=name)


def names() -> list[str]:
    """The registered task names, sorted."""
    return REGISTRY.names()


def load_plugin(target: str) -> Any:
    """Import a plugin file or module; importing it registers its tasks."""
    return _load_plugin(target)


def show(spec: str, length: int | None = None, seed: int = 0) -> str:
    """One decoded evaluation example of ``spec`` at ``length`` (default: the training
    length), as text for a person."""
    from .render import render

    task = get(spec)
    length = task.train_length if length is None else length
    batch = task.sample(task.rng(seed, "eval"), length, 1)
    return render(task, batch, length, seed)
