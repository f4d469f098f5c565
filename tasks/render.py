"""Text for a person: one decoded example of a task (``suite show TASK``)."""

from __future__ import annotations

from typing import Any

from .base import Batch, Task

HEAD, TAIL = 24, 8  # items shown at each end of a long list
TEXT_HEAD, TEXT_TAIL = 600, 200  # characters shown at each end of a long text


def shorten(items: list[Any]) -> str:
    if len(items) <= HEAD + TAIL:
        return " ".join(map(fmt, items))
    hidden = len(items) - HEAD - TAIL
    return " ".join([*map(fmt, items[:HEAD]), f"... ({hidden} more) ...", *map(fmt, items[-TAIL:])])


def fmt(value: Any) -> str:
    """One value: tuples without spaces, lists shortened, long text cut in the middle."""
    if isinstance(value, tuple):
        return "(" + ",".join(fmt(v) for v in value) + ")"
    if isinstance(value, list):
        return f"[{len(value)}] " + shorten(value)
    if isinstance(value, str) and len(value) > TEXT_HEAD + TEXT_TAIL:
        cut = len(value) - TEXT_HEAD - TEXT_TAIL
        return repr(value[:TEXT_HEAD]) + f" ... ({cut} characters) ... " + repr(value[-TEXT_TAIL:])
    if isinstance(value, str):
        return repr(value)
    return str(value)


def render(task: Task, batch: Batch, length: int, seed: int) -> str:
    """A header naming the task, its sizes and what it asks, then each decoded field."""
    doc = (type(task).__doc__ or "").strip().split("\n\n")[0]
    lo, hi = task.train_lengths
    lines = [
        f"{task.spec} (version {task.version}): length {length}, seed {seed}, eval split",
        f"vocab {task.vocab_size}, train lengths {lo}-{hi}, eval lengths "
        f"{', '.join(map(str, task.eval_lengths))}; metrics "
        + ", ".join(f"{k} ({v})" for k, v in task.metrics.items()),
        " ".join(doc.split()),
        f"sequence: {batch.tokens.shape[1]} tokens, {int((batch.targets[0] != -100).sum())} scored",
        "",
    ]
    for key, value in task.decode(batch, 0).items():
        lines.append(f"{key}: {fmt(value)}")
    return "\n".join(lines)
