"""The local executor: the cells of a sweep one after another in this process."""

from __future__ import annotations

import sys
import time

import tasks

from ..run import _headline, run_cell
from ..train import Cell


def sweep(cells: list[Cell], tracking_uri: str | None = None, progress: bool = True,
          out=None) -> int:
    """Run the cells in order; returns the number that failed."""
    out = out or sys.stdout
    from results.offline import JsonlTracker, is_offline

    if is_offline(tracking_uri):  # no MLflow on this machine: an offline log to import later
        tracker = JsonlTracker(tracking_uri)
    else:
        from results.tracking import Tracker

        tracker = Tracker(tracking_uri)
    print(f"store: {tracker.uri}  ({len(cells)} cells)", file=out, flush=True)
    failed = 0
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.name}"
        done = tracker.finished(tasks.get(cell.task).name, cell.config_hash)
        if done:
            print(f"{head}: skipped, finished already (config {cell.config_hash}, run {done})",
                  file=out, flush=True)
            continue
        t0 = time.perf_counter()
        try:
            results = run_cell(cell, tracker, progress)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # recorded FAILED in the store; the sweep goes on
            failed += 1
            print(f"{head}: FAILED: {type(err).__name__}: {err}", file=out, flush=True)
            continue
        ladder = " ".join(f"{n}:{_headline(r)}" for n, r in results.items())
        print(f"{head}: done in {time.perf_counter() - t0:.0f}s  {ladder}", file=out, flush=True)
    return failed
