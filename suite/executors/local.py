"""The local executor: the cells of a sweep one after another in this process, or side by side
in worker processes (``jobs`` > 1, see ``pool``). CPU cells run with ``suite.cpu.threads()``
torch threads either way, so a seed gives the same numbers whatever ``jobs`` is.

The sweep's loop (``loop``) skips finished cells, and claims each cell in this process before
it trains, so that sweeps started at once on one store train every cell exactly once; this
module says only how a claimed cell trains. With worker processes, this process holds the
claims of the cells its workers train (a worker ends when this process is gone).
"""

from __future__ import annotations

import sys
import time

from ..attempts import ClaimedTracker, DuplicateRun, StoreHome, store_home
from ..run import ladder, run_cell
from ..train import Cell
from .loop import Executor, Job, Outcome, sweep_loop


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
    return sweep_loop(Local(tracker, home, say, progress, jobs), cells)


class Local(Executor):
    """Cells trained in this process, one at a time, or handed to ``jobs`` worker processes
    (``pool.Workers``) when more than one cell is left to train."""

    def __init__(self, tracker, home: StoreHome, say, progress: bool, jobs: int):
        super().__init__(tracker, home, say)
        self.progress, self.jobs = progress, jobs
        self.workers = None
        self.threads: int | None = None  # torch's threads before the sweep, given back at its end

    def plan(self, todo: list[Job]) -> None:
        """The worker processes (``jobs`` > 1 and more than one cell to train), then torch at
        ``suite.cpu.threads()`` threads for the sweep's CPU cells."""
        if self.jobs > 1 and len(todo) > 1:
            from .pool import Workers

            self.workers = Workers(todo, self.tracker, min(self.jobs, len(todo)), self.say)
        if any(job.cell.device == "cpu" for job in todo):
            import torch

            from .. import cpu

            self.threads = torch.get_num_threads()
            torch.set_num_threads(cpu.threads())

    def run(self, job: Job) -> Outcome | None:
        if self.workers is not None:  # the worker's end releases the claim
            self.workers.submit(job, self.home.cell_dir(job.cell.config_hash))
            return None
        return self._train(job)

    @property
    def busy(self) -> bool:
        return self.workers is not None and self.workers.busy

    def collect(self, timeout: float | None) -> list[Outcome]:
        return self.workers.collect(timeout)

    def close(self) -> None:
        try:
            if self.workers is not None:
                self.workers.close()
        finally:
            if self.threads is not None:
                import torch

                torch.set_num_threads(self.threads)

    def _train(self, job: Job) -> Outcome:
        """The claimed cell trained here, logged through a ``ClaimedTracker``; its claim is
        released when the cell ends."""
        cell, cell_dir = job.cell, self.home.cell_dir(job.cell.config_hash)
        with job.claim:
            claimed = ClaimedTracker(self.tracker, cell.config_hash, cell_dir,
                                     took_over=job.claim.took_over)
            t0 = time.perf_counter()
            try:
                results = run_cell(cell, claimed, self.progress, ckpt_dir=cell_dir)
            except DuplicateRun as dup:  # ended KILLED: the cell finished in another run
                return Outcome(job, "duplicate", run=dup.args[0])
            except Exception as err:  # recorded FAILED in the store; the sweep goes on
                return Outcome(job, "failed", error=f"{type(err).__name__}: {err}",
                               superseded=tuple(claimed.superseded))
        return Outcome(job, "done", seconds=time.perf_counter() - t0, ladder=ladder(results),
                       superseded=tuple(claimed.superseded))
