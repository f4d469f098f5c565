"""The local executor: the cells of a sweep one after another in this process.

Each cell is claimed before it trains (``suite.attempts``), so that sweeps started at once on
one store train every cell exactly once: a cell another live process holds is put off, and once
every other cell is done the sweep waits for it (saying so); when its holder lets go, the cell is
skipped if it finished, else trained here. A claim whose process died is taken over, and the
dead attempt's run ends KILLED.
"""

from __future__ import annotations

import sys
import time

from results.claims import Holder

from ..attempts import ClaimedTracker, DuplicateRun, store_home
from ..run import experiment, ladder, run_cell
from ..train import Cell

POLL_S = 1.0  # between looks at the claims of cells another process trains


def sweep(cells: list[Cell], tracking_uri: str | None = None, progress: bool = True,
          out=None) -> int:
    """Run the cells in order; returns the number that failed."""
    out = out or sys.stdout
    from results.store import open_tracker

    tracker = open_tracker(tracking_uri)  # jsonl:PATH: an offline log, for a machine without
    # MLflow (imported into a store later)
    home = store_home(tracker)
    print(f"store: {tracker.uri}  ({len(cells)} cells)", file=out, flush=True)
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731
    failed, waiting = 0, []
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.name}"
        outcome = _attempt(cell, head, tracker, home, progress, say)
        if outcome == "failed":
            failed += 1
        elif outcome is not None:  # held by another live process
            say(f"{head}: being trained by {outcome} (config {cell.config_hash}); "
                "back to it when the other cells are done")
            waiting.append((head, cell))
    if waiting:
        say(f"waiting for {len(waiting)} cell(s) that other processes train (Ctrl-C leaves "
            "them to those)")
    while waiting:
        still = []
        for head, cell in waiting:
            if home.claims.holder(cell.config_hash) is not None:
                still.append((head, cell))
                continue
            outcome = _attempt(cell, head, tracker, home, progress, say, after_wait=True)
            if outcome == "failed":
                failed += 1
            elif outcome is not None:  # claimed again by another process meanwhile
                still.append((head, cell))
        waiting = still
        if waiting:
            time.sleep(POLL_S)
    return failed


def _attempt(cell, head, tracker, home, progress, say, after_wait=False):
    """Skip, or claim and run, one cell: None (skipped or done), "failed", or the live Holder
    of its claim."""
    done = tracker.finished(experiment(cell), cell.config_hash)
    if done:
        by = "by another process" if after_wait else "already"
        say(f"{head}: skipped, finished {by} (config {cell.config_hash}, run {done})")
        return None
    claim = home.claims.claim(cell.config_hash, cell.name)
    if isinstance(claim, Holder):
        return claim
    with claim:
        done = tracker.finished(experiment(cell), cell.config_hash)  # finished meanwhile
        if done:
            say(f"{head}: skipped, finished by another process (config {cell.config_hash}, "
                f"run {done})")
            return None
        if claim.took_over is not None:
            say(f"{head}: taking over from {claim.took_over}, which is gone")
        claimed = ClaimedTracker(tracker, cell.config_hash, home.cell_dir(cell.config_hash),
                                 took_over=claim.took_over)
        t0 = time.perf_counter()
        try:
            results = run_cell(cell, claimed, progress, ckpt_dir=home.cell_dir(cell.config_hash))
        except DuplicateRun as dup:  # ended KILLED: the cell finished in another run
            say(f"{head}: skipped, finished by another run ({dup.args[0]})")
            return None
        except Exception as err:  # recorded FAILED in the store; the sweep goes on
            say(f"{head}: FAILED: {type(err).__name__}: {err}")
            return "failed"
    for run_id in claimed.superseded:
        say(f"{head}: the interrupted attempt {run_id} is marked KILLED")
    say(f"{head}: done in {time.perf_counter() - t0:.0f}s  {ladder(results)}")
    return None
