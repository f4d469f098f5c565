"""The local executor: the cells of a sweep one after another in this process, or side by side
in worker processes (``jobs`` > 1, see ``pool``). CPU cells run with ``suite.cpu.threads()``
torch threads either way, so a seed gives the same numbers whatever ``jobs`` is.

Each cell is claimed by this process before it trains (``suite.attempts``), so that sweeps
started at once on one store train every cell exactly once: a cell another live process holds
is put off, and once every other cell is done the sweep waits for it (saying so); when its
holder lets go, the cell is skipped if it finished, else trained here. A claim whose process
died is taken over, and the dead attempt's run ends KILLED. With worker processes, this process
holds the claims of the cells its workers train (a worker ends when this process is gone).
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
          out=None, jobs: int = 1) -> int:
    """Run the cells (in order, or on ``jobs`` worker processes); returns the number that
    failed."""
    out = out or sys.stdout
    from results.store import open_tracker

    tracker = open_tracker(tracking_uri)  # jsonl:PATH: an offline log, for a machine without
    # MLflow (imported into a store later)
    home = store_home(tracker)
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
    workers = None
    if jobs > 1 and len(todo) > 1:
        from .pool import Workers

        workers = Workers(todo, tracker, min(jobs, len(todo)), say)
    try:
        with _cpu_threads(any(c.device == "cpu" for _, c in todo)):
            return _claimed(todo, tracker, home, progress, say, workers)
    finally:
        if workers is not None:
            workers.close()


def _claimed(todo, tracker, home, progress, say, workers) -> int:
    """Claim and train (or hand to a worker) every cell of ``todo``, waiting for those other
    processes hold; the number that failed."""
    failed, waiting = 0, []

    def attempt(head, cell, after_wait=False) -> bool:
        """False when another live process holds the cell."""
        nonlocal failed
        outcome = _attempt(cell, head, tracker, home, progress, say, workers, after_wait)
        if outcome == "failed":
            failed += 1
        elif isinstance(outcome, Holder):
            if not after_wait:
                say(f"{head}: being trained by {outcome} (config {cell.config_hash}); "
                    "back to it when the other cells are done")
            return False
        return True

    for head, cell in todo:
        if not attempt(head, cell):
            waiting.append((head, cell))
    if waiting:
        say(f"waiting for {len(waiting)} cell(s) that other processes train (Ctrl-C leaves "
            "them to those)")
    while waiting or (workers is not None and workers.busy):
        if workers is not None:
            failed += workers.collect(timeout=POLL_S if workers.busy else 0)
        still = []
        for head, cell in waiting:
            if home.claims.holder(cell.config_hash) is not None or not attempt(head, cell, True):
                still.append((head, cell))
        waiting = still
        if waiting and (workers is None or not workers.busy):
            time.sleep(POLL_S)
    return failed


def _attempt(cell, head, tracker, home, progress, say, workers=None, after_wait=False):
    """Skip, or claim and run (or hand to a worker), one cell: None (skipped, done or handed
    over), "failed", or the live Holder of its claim."""
    done = tracker.finished(experiment(cell), cell.config_hash)
    if done:
        by = "by another process" if after_wait else "already"
        say(f"{head}: skipped, finished {by} (config {cell.config_hash}, run {done})")
        return None
    claim = home.claims.claim(cell.config_hash, cell.name)
    if isinstance(claim, Holder):
        return claim
    try:
        done = tracker.finished(experiment(cell), cell.config_hash)  # finished meanwhile
        if done:
            say(f"{head}: skipped, finished by another process (config {cell.config_hash}, "
                f"run {done})")
            claim.release()
            return None
        if claim.took_over is not None:
            say(f"{head}: taking over from {claim.took_over}, which is gone")
        if workers is not None:  # the worker's end releases the claim
            workers.submit(head, cell, home.cell_dir(cell.config_hash), claim)
            return None
    except BaseException:
        claim.release()
        raise
    with claim:
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
