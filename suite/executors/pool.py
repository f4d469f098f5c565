"""Cells side by side on one machine: ``suite run --jobs N`` (on the CPU the default is one
cell per core).

N worker processes take the cells one at a time. They are spawned (not forked), so each
imports torch and numba afresh under the reproducible CPU settings of ``suite.cpu`` and runs
its cell with ``suite.cpu.threads()`` torch threads: a cell's numbers do not depend on N, nor
on how many cores the machine has. A worker logs its cell to an offline log of its own
(``results.offline``); this process, the only one that writes to the store, imports the log
when the cell ends (FINISHED, or FAILED with its error), so no two processes ever write one
SQLite file. Finished cells are skipped by config hash before any worker starts. An
interrupted sweep (Ctrl-C, SIGTERM) stops its workers with SIGTERM, which ends each run in
progress KILLED, and moves those runs into the store too (KILLED, with their history so far);
each cell keeps its last checkpoint, from which the same command resumes in a new run.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .. import cpu  # light: this module is what a spawned worker imports before torch
from .loop import Job, Outcome  # light too

if TYPE_CHECKING:
    from ..train import Cell


def _init(parent: int, plugins: list[str], environ: dict[str, str], threads: int) -> None:
    """A worker's start, before torch is imported: a watch that ends the worker when the sweep
    is gone (even by ``kill -9``), the sweep's settings (``environ``: the ``SUITE_*`` variables
    that give them, ``suite.settings.environment``), the CPU settings and ``threads`` torch
    threads, then the plugins the cells need."""
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # Ctrl-C reaches the workers too (one process group)
    sys.unraisablehook = _unraisable
    os.environ.update(environ)
    cpu.apply()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    import torch

    from .plugins import load_plugins

    torch.set_num_threads(threads)
    load_plugins(plugins)


#: whether this worker is running a cell (``_work``); an idle worker has no run to end
_BUSY = False


def _stop(signum, frame) -> None:
    """SIGTERM from the sweep's ``Workers.close`` (or Ctrl-C): a worker running a cell ends as
    Ctrl-C does, so that the run in progress ends KILLED in the worker's log; an idle worker
    (waiting for its next cell) has nothing to end and exits at once, quietly: an interrupt
    raised there would escape the pool's loop and print a traceback."""
    if _BUSY:
        raise KeyboardInterrupt
    os._exit(130)


def _unraisable(info, default=sys.unraisablehook) -> None:
    """An interrupt from ``_stop`` that landed inside a callback Python cannot raise from (a
    weakref callback of the import machinery, seen when SIGTERM came during an import) would be
    printed with a traceback and then lost, and the cell would train on: the signal is sent
    again from another thread, once this hook has returned, and ``_stop`` runs once more outside
    the callback (a signal sent from here would be handled inside this hook)."""
    if isinstance(info.exc_value, KeyboardInterrupt) and _BUSY:
        threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return
    default(info)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # the sweep is gone: its cell resumes from its checkpoint next time


def _work(cell: Cell, log_uri: str, ckpt_dir: str) -> dict:
    """One cell in a worker, logged to ``log_uri`` (an offline log), checkpointed in
    ``ckpt_dir`` (the cell's folder in the store's home)."""
    from results.offline import JsonlTracker

    from ..run import ladder, run_cell

    global _BUSY
    t0 = time.perf_counter()
    try:
        _BUSY = True
        results = run_cell(cell, JsonlTracker(log_uri), progress=False, ckpt_dir=Path(ckpt_dir))
    except Exception as err:  # the offline log holds the FAILED run and its error
        return {"status": "failed", "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()}
    except KeyboardInterrupt:  # SIGTERM from Workers.close, or Ctrl-C: the log holds the run
        os._exit(130)  # ended KILLED; the worker is done (the sweep is stopping)
    finally:
        _BUSY = False
    return {"status": "finished", "seconds": time.perf_counter() - t0,
            "ladder": ladder(results)}


def _store(tracker, log: Path) -> None:
    """Move a worker's offline log into the sweep's store (or offline log)."""
    from results.schema import is_offline

    if is_offline(tracker.uri):
        with open(tracker.path, "a") as dst:
            dst.write(log.read_text())
    else:
        from results.tracking import replay

        replay(log, tracker.uri, source=None)
    log.unlink(missing_ok=True)


def end_attempts(tracker, cell: Cell, took_over=None) -> list[str]:
    """After a worker's run of ``cell`` is in the store: every other RUNNING run of its config
    (an attempt whose process died) ends KILLED, and a FINISHED cell's optimizer checkpoint
    goes (as ``ClaimedTracker`` does for a cell trained in this process); the ids of the runs
    ended."""
    from ..attempts import supersede
    from ..run import experiment

    exp = experiment(cell)
    done = tracker.finished(exp, cell.config_hash)
    keep = done or next(iter(tracker.runs(exp, config_hash=cell.config_hash, status="FAILED")),
                        "")
    dead = f" (its claim, held by {took_over}, was taken over)" if took_over else ""
    return supersede(tracker, exp, cell.config_hash, keep,
                     f"interrupted: its process ended before the run did{dead}; run {keep} took "
                     "the cell over")


class Workers:
    """``jobs`` worker processes for the cells of ``cells``: cells are handed over one at a
    time (``submit``, with the claim this process holds for them) and taken back by
    ``collect``, which moves each finished cell's log into the store and gives its claim
    back."""

    def __init__(self, cells: list[Job], tracker, jobs: int, say):
        from .. import settings
        from .plugins import plugins_for

        env = dict(os.environ)
        cpu.apply(env)  # what a worker's _init sets
        say(f"{jobs} worker processes, {cpu.threads()} torch thread(s) each; CPU settings: "
            + (", ".join(f"{k}={env[k]!r}" for k in cpu.PINS if k in env) or "the CPU's own"))
        self.tracker, self.say = tracker, say
        self.tmp = Path(tempfile.mkdtemp(prefix="suite-cells-"))
        self.pool = cf.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
            initargs=(os.getpid(), plugins_for([job.cell for job in cells]),
                      settings.environment(settings.current()), cpu.threads()))
        self.running: dict[cf.Future, tuple[Job, Path, Path]] = {}
        self.count = 0

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def submit(self, job: Job, ckpt_dir: Path) -> None:
        """Hand the job's cell to a worker; ``job.claim`` is released when it is collected."""
        self.count += 1
        log = self.tmp / f"cell-{self.count}.jsonl"
        fut = self.pool.submit(_work, job.cell, f"jsonl:{log}", str(ckpt_dir))
        self.running[fut] = (job, log, ckpt_dir)

    def collect(self, timeout: float | None = 0) -> list[Outcome]:
        """Take back the cells whose workers are done (waiting up to ``timeout`` seconds for
        one; None: as long as it takes): their outcomes."""
        done, _ = cf.wait(list(self.running), timeout=timeout,
                          return_when=cf.FIRST_COMPLETED)
        outcomes = []
        for fut in done:
            job, log, ckpt_dir = self.running.pop(fut)
            try:
                result = fut.result()
                _store(self.tracker, log)
                superseded = tuple(end_attempts(self.tracker, job.cell, job.claim.took_over))
                if result["status"] == "failed":
                    outcomes.append(Outcome(job, "failed", error=result["error"],
                                            superseded=superseded))
                else:
                    (ckpt_dir / "last.pt").unlink(missing_ok=True)  # FINISHED: no resume
                    outcomes.append(Outcome(job, "done", seconds=result["seconds"],
                                            ladder=result["ladder"], superseded=superseded))
            finally:
                job.claim.release()
        return outcomes

    def close(self) -> None:
        """Stop the workers and give back the claims of their cells. Cells still running are
        interrupted: SIGTERM ends each run KILLED in its worker's log (a worker that has not
        ended after ``STOP_S`` is killed, and its run ended KILLED here), the logs go into the
        store, and the cells resume from their checkpoints next time."""
        if self.running:
            procs = list((getattr(self.pool, "_processes", None) or {}).values())  # shutdown
            self.pool.shutdown(wait=False, cancel_futures=True)  # forgets them
            for proc in procs:
                proc.terminate()
            deadline = time.monotonic() + STOP_S
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            for job, log, _ in self.running.values():
                try:
                    if _ended_killed(log):
                        _store(self.tracker, log)
                        self.say(f"{job.head}: interrupted; its run is marked KILLED and "
                                 "resumes from its last checkpoint")
                except Exception as err:  # the sweep is stopping anyway: say where it is
                    self.say(f"{job.head}: interrupted; its log could not be stored ({err}); "
                             f"it stays in {log}")
                finally:
                    job.claim.release()
            self.running.clear()
        else:
            self.pool.shutdown()
        if self.tmp.exists() and all(p.name.endswith(".lock") for p in self.tmp.iterdir()):
            shutil.rmtree(self.tmp, ignore_errors=True)  # every log went to the store


#: seconds the workers of an interrupted sweep get to end their runs KILLED
STOP_S = 20.0


def _ended_killed(log: Path) -> bool:
    """An interrupted worker's log made whole: cut after its last complete line, and a run
    the worker could not end, ended KILLED; False when it holds no run (the cell had not
    started)."""
    from results.offline import JsonlTracker

    if not log.exists():
        return False
    data = log.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if whole != data:
        log.write_bytes(whole)
    tracker = JsonlTracker(f"jsonl:{log}")
    found = tracker.run_states()
    for run, r in found.items():
        if r["status"] == "RUNNING":
            tracker.end(run, "KILLED", {"suite.error": "interrupted: the sweep stopped before "
                                        "the cell ended; it resumes from its last checkpoint"})
    return bool(found)
