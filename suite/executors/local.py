"""The local executor: the cells of a sweep one after another in this process."""

from __future__ import annotations

import sys
import time

from ..run import experiment, ladder, run_cell
from ..train import Cell


def sweep(cells: list[Cell], tracking_uri: str | None = None, progress: bool = True,
          out=None) -> int:
    """Run the cells in order; returns the number that failed."""
    out = out or sys.stdout
    from results.store import open_tracker

    tracker = open_tracker(tracking_uri)  # jsonl:PATH: an offline log, for a machine without
    # MLflow (imported into a store later)
    print(f"store: {tracker.uri}  ({len(cells)} cells)", file=out, flush=True)
    failed = 0
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.name}"
        done = tracker.finished(experiment(cell), cell.config_hash)
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
        print(f"{head}: done in {time.perf_counter() - t0:.0f}s  {ladder(results)}", file=out,
              flush=True)
    return failed
