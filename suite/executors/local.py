"""The local executor: the cells of a sweep one after another in this process, or side by side
in worker processes (``jobs`` > 1, see ``pool``). CPU cells run with ``suite.cpu.threads()``
torch threads either way, so a seed gives the same numbers whatever ``jobs`` is."""

from __future__ import annotations

import sys
import time

from ..run import experiment, ladder, run_cell
from ..train import Cell


def sweep(cells: list[Cell], tracking_uri: str | None = None, progress: bool = True,
          out=None, jobs: int = 1) -> int:
    """Run the cells (in order, or on ``jobs`` worker processes); returns the number that
    failed."""
    out = out or sys.stdout
    from results.store import open_tracker

    tracker = open_tracker(tracking_uri)  # jsonl:PATH: an offline log, for a machine without
    # MLflow (imported into a store later)
    print(f"store: {tracker.uri}  ({len(cells)} cells)", file=out, flush=True)
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731
    todo = []
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.name}"
        done = tracker.finished(experiment(cell), cell.config_hash)
        if done:
            say(f"{head}: skipped, finished already (config {cell.config_hash}, run {done})")
        else:
            todo.append((head, cell))
    if jobs > 1 and len(todo) > 1:
        from .pool import sweep_parallel

        return sweep_parallel(todo, tracker, min(jobs, len(todo)), say)
    with _cpu_threads(any(c.device == "cpu" for _, c in todo)):
        return _sequential(todo, tracker, progress, say)


def _sequential(todo, tracker, progress, say) -> int:
    failed = 0
    for head, cell in todo:
        t0 = time.perf_counter()
        try:
            results = run_cell(cell, tracker, progress)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # recorded FAILED in the store; the sweep goes on
            failed += 1
            say(f"{head}: FAILED: {type(err).__name__}: {err}")
            continue
        say(f"{head}: done in {time.perf_counter() - t0:.0f}s  {ladder(results)}")
    return failed


class _cpu_threads:
    """torch at ``suite.cpu.threads()`` threads for the sweep (CPU cells), then as before."""

    def __init__(self, on: bool):
        self.on, self.before = on, None

    def __enter__(self):
        if self.on:
            import torch

            from .. import cpu

            self.before = torch.get_num_threads()
            torch.set_num_threads(cpu.threads())

    def __exit__(self, *exc):
        if self.before is not None:
            import torch

            torch.set_num_threads(self.before)
