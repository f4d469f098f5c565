"""The loop of a sweep, written once for every executor: which cells start, and when.

A sweep first skips the cells whose config hash has a FINISHED run in the store (saying so),
then starts the others in order. Right before a cell starts, the store is checked again and
the cell is claimed (``suite.attempts``), so that of the sweeps running at once on one store
exactly one trains it. A cell that another live process holds is put off (the sweep says by
whom) and looked at again every ``POLL_S`` seconds while the other cells run, and after them;
when its holder lets go, the cell is skipped if it finished, else claimed and started here. A
dead holder's claim is taken over (its attempt's run ends KILLED when the new one starts).

An ``Executor`` says only how a cell starts and how it ended: the local one trains it in this
process or hands it to a worker process, the Ray one submits it as a Ray task (which claims the
cell where it runs, and reports a cell it found held). The loop turns each ``Outcome`` into the
sweep's line for it and counts the failures, in one wording for every executor.

Light on purpose (no torch, no mlflow): the worker pool imports it, and a spawned worker imports
the pool before torch.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from results.claims import Claim, Holder

if TYPE_CHECKING:
    from ..attempts import StoreHome
    from ..train import Cell

POLL_S = 1.0  # between looks at the claims of cells that another process trains


@dataclasses.dataclass
class Job:
    """A cell of the sweep, with its heading in the sweep's output (``[3/8] name``) and, while
    it runs, the claim this process holds for it (None where the executor's task claims the
    cell itself)."""

    head: str
    cell: Cell
    claim: Claim | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a started cell ended, as its executor reports it.

    ``done``: trained and FINISHED (``seconds``, ``ladder``: its results on one line);
    ``failed``: its run ended FAILED with ``error``; ``duplicate``: another run finished the
    cell first (``run``); ``busy``: another live process holds the cell's claim (``holder``),
    so the cell waits for it. ``superseded``: runs of dead attempts that this attempt ended
    KILLED."""

    job: Job
    status: Literal["done", "failed", "duplicate", "busy"]
    seconds: float = 0.0
    ladder: str = ""
    error: str = ""
    run: str = ""
    holder: Holder | str | None = None
    superseded: tuple[str, ...] = ()


class Executor(abc.ABC):
    """How the cells of a sweep start and end; ``sweep_loop`` decides which start, and when.

    ``tracker`` is the store as this process reads it (which cells finished), ``home`` its
    folders (claims, checkpoints), ``say`` prints one line of the sweep's output. The loop calls
    ``plan`` once, then ``claim`` and ``run`` for each cell it starts, ``collect`` while
    ``busy``, and ``close`` at the end, also when the sweep stops on an error or Ctrl-C."""

    def __init__(self, tracker, home: StoreHome, say: Callable[[str], None]):
        self.tracker, self.home, self.say = tracker, home, say

    def plan(self, todo: list[Job]) -> None:  # noqa: B027 (a hook: nothing to ready by default)
        """Get ready to start ``todo``, the cells left once the finished ones are skipped."""

    def claim(self, cell: Cell) -> Claim | Holder | None:
        """Claim the cell for this process: the ``Claim``, or the live ``Holder`` of another
        process's claim. An executor whose tasks claim their cells where they run returns the
        live holder, or None."""
        return self.home.claims.claim(cell.config_hash, cell.name)

    @abc.abstractmethod
    def run(self, job: Job) -> Outcome | None:
        """Start the job's cell: its outcome when it ran here to its end, else None (its
        outcome comes from ``collect``). From the call on, the executor releases
        ``job.claim`` (when there is one) once the cell has ended."""

    @property
    def busy(self) -> bool:
        """Whether cells started by ``run`` have outcomes still to collect."""
        return False

    def collect(self, timeout: float | None) -> list[Outcome]:
        """The outcomes of started cells that have ended, waiting up to ``timeout`` seconds
        (None: as long as it takes) for the first; called only while ``busy``."""
        return []

    def close(self) -> None:  # noqa: B027 (a hook: nothing to stop by default)
        """The sweep's end: stop the cells still running (their runs end KILLED) and give back
        their claims."""


def sweep_loop(executor: Executor, cells: list[Cell]) -> int:
    """Run the cells through ``executor`` (see the module's docstring); the number that
    failed."""
    return _Loop(executor).sweep(cells)


class _Loop:
    """One sweep's state: the executor, the cells waiting for another process's claim, and the
    failures so far."""

    def __init__(self, executor: Executor):
        self.ex = executor
        self.say = executor.say
        self.waiting: list[Job] = []
        self.failed = 0

    def sweep(self, cells: list[Cell]) -> int:
        jobs = [Job(f"[{i}/{len(cells)}] {cell.name}", cell) for i, cell in enumerate(cells, 1)]
        todo = [job for job in jobs if not self._finished(job, "already")]
        try:
            self.ex.plan(todo)
            for job in todo:
                self._start(job)
            if self.waiting:
                self.say(f"waiting for {len(self.waiting)} cell(s) that other processes train "
                         "(Ctrl-C leaves them to those)")
            while self.waiting or self.ex.busy:
                self._take_up_released()
                if self.ex.busy:
                    for outcome in self.ex.collect(POLL_S if self.waiting else None):
                        self._ended(outcome)
                elif self.waiting:
                    time.sleep(POLL_S)
        finally:
            self.ex.close()
        return self.failed

    def _finished(self, job: Job, by: str) -> bool:
        """Whether the cell has a FINISHED run in the store, saying so (finished ``by``)."""
        from ..run import experiment

        cell = job.cell
        done = self.ex.tracker.finished(experiment(cell), cell.config_hash)
        if done:
            self.say(f"{job.head}: skipped, finished {by} (config {cell.config_hash}, "
                     f"run {done})")
        return bool(done)

    def _start(self, job: Job, after_wait: bool = False) -> None:
        """Skip the cell if it has finished, else claim it and hand it to the executor; a cell
        that another live process holds waits (said once, not again after a wait)."""
        if self._finished(job, "by another process" if after_wait else "already"):
            return
        claim = self.ex.claim(job.cell)
        if isinstance(claim, Holder):
            self._wait(job, claim, say=not after_wait)
            return
        job.claim = claim
        try:
            outcome = self._run(job)
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        if outcome is not None:
            self._ended(outcome)

    def _run(self, job: Job) -> Outcome | None:
        """The claimed cell to the executor, unless it finished between the check and the
        claim (then the claim goes back)."""
        claim = job.claim
        if claim is not None:
            if self._finished(job, "by another process"):
                claim.release()
                return None
            if claim.took_over is not None:
                self.say(f"{job.head}: taking over from {claim.took_over}, which is gone")
        return self.ex.run(job)

    def _wait(self, job: Job, holder: Holder | str, say: bool = True) -> None:
        if say:
            self.say(f"{job.head}: being trained by {holder} (config {job.cell.config_hash}); "
                     "back to it when that process lets go")
        self.waiting.append(job)

    def _take_up_released(self) -> None:
        """Start (or skip, when finished) the waiting cells whose holder has let go."""
        waiting, self.waiting = self.waiting, []
        for job in waiting:
            if self.ex.home.claims.holder(job.cell.config_hash) is not None:
                self.waiting.append(job)
            else:
                self._start(job, after_wait=True)

    def _ended(self, outcome: Outcome) -> None:
        """The sweep's line for a cell that ended; a failure is counted, a busy cell waits."""
        head = outcome.job.head
        for run_id in outcome.superseded:
            self.say(f"{head}: the interrupted attempt {run_id} is marked KILLED")
        if outcome.status == "busy":
            self._wait(outcome.job, outcome.holder)
        elif outcome.status == "done":
            self.say(f"{head}: done in {outcome.seconds:.0f}s  {outcome.ladder}")
        elif outcome.status == "duplicate":
            self.say(f"{head}: skipped, finished by another run ({outcome.run})")
        else:
            self.failed += 1
            self.say(f"{head}: FAILED: {outcome.error}")
