"""Cells side by side on one machine: ``suite run --jobs N`` (on the CPU the default is one
cell per core).

N worker processes take the cells one at a time. They are spawned (not forked), so each
imports torch and numba afresh under the reproducible CPU settings of ``suite.cpu`` and runs
its cell with ``suite.cpu.threads()`` torch threads: a cell's numbers do not depend on N, nor
on how many cores the machine has. A worker logs its cell to an offline log of its own
(``results.offline``); this process, the only one that writes to the store, imports the log
when the cell ends (FINISHED, or FAILED with its error), so no two processes ever write one
SQLite file. Finished cells are skipped by config hash before any worker starts; an
interrupted sweep leaves each cell its last checkpoint, from which the same command resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .. import cpu  # light: this module is what a spawned worker imports before torch

if TYPE_CHECKING:
    from ..train import Cell


def _init(parent: int, plugins: list[str]) -> None:
    """A worker's start, before torch is imported: a watch that ends the worker when the sweep
    is gone (even by ``kill -9``), the CPU settings and torch threads, then the plugins the
    cells need."""
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    cpu.apply()
    n = str(cpu.threads())
    os.environ.setdefault("OMP_NUM_THREADS", n)
    os.environ.setdefault("MKL_NUM_THREADS", n)
    import torch

    from .ray import load_plugins

    torch.set_num_threads(cpu.threads())
    load_plugins(plugins)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # the sweep is gone: its cell resumes from its checkpoint next time


def _work(cell: Cell, log_uri: str, ckpt_dir: str) -> dict:
    """One cell in a worker, logged to ``log_uri`` (an offline log), checkpointed in
    ``ckpt_dir`` (the cell's folder in the store's home)."""
    from results.offline import JsonlTracker

    from ..run import ladder, run_cell

    t0 = time.perf_counter()
    try:
        results = run_cell(cell, JsonlTracker(log_uri), progress=False, ckpt_dir=Path(ckpt_dir))
    except Exception as err:  # the offline log holds the FAILED run and its error
        return {"status": "failed", "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()}
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


class Workers:
    """``jobs`` worker processes for the cells of ``cells`` ((heading, cell) pairs): cells
    are handed over one at a time (``submit``, with the claim this process holds for them) and
    taken back by ``collect``, which moves each finished cell's log into the store and gives
    its claim back."""

    def __init__(self, cells: list[tuple[str, Cell]], tracker, jobs: int, say):
        from .ray import plugins_for

        env = dict(os.environ)
        cpu.apply(env)  # what a worker's _init sets
        say(f"{jobs} worker processes, {cpu.threads()} torch thread(s) each; CPU settings: "
            + (", ".join(f"{k}={env[k]!r}" for k in cpu.PINS if k in env) or "the CPU's own"))
        self.tracker, self.say = tracker, say
        self.tmp = Path(tempfile.mkdtemp(prefix="suite-cells-"))
        self.pool = cf.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
            initargs=(os.getpid(), plugins_for([c for _, c in cells])))
        self.running: dict = {}
        self.count = 0

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def submit(self, head: str, cell: Cell, ckpt_dir: Path, claim) -> None:
        self.count += 1
        log = self.tmp / f"cell-{self.count}.jsonl"
        fut = self.pool.submit(_work, cell, f"jsonl:{log}", str(ckpt_dir))
        self.running[fut] = (head, cell, log, ckpt_dir, claim)

    def collect(self, timeout: float = 0) -> int:
        """Take back the cells whose workers are done (waiting up to ``timeout`` seconds for
        one); how many of them failed."""
        from .local import end_attempts

        done, _ = cf.wait(list(self.running), timeout=timeout,
                          return_when=cf.FIRST_COMPLETED)
        failed = 0
        for fut in done:
            head, cell, log, ckpt_dir, claim = self.running.pop(fut)
            try:
                result = fut.result()
                _store(self.tracker, log)
                end_attempts(self.tracker, cell, head, self.say, claim.took_over)
                if result["status"] == "failed":
                    failed += 1
                    self.say(f"{head}: FAILED: {result['error']}")
                else:
                    (ckpt_dir / "last.pt").unlink(missing_ok=True)  # FINISHED: no resume
                    self.say(f"{head}: done in {result['seconds']:.0f}s  {result['ladder']}")
            finally:
                claim.release()
        return failed

    def close(self) -> None:
        """Stop the workers (those still running are ended: their cells resume from their
        checkpoints next time) and give back the claims of their cells."""
        if self.running:
            self.pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.terminate()
            for *_, claim in self.running.values():
                claim.release()
            self.running.clear()
        else:
            self.pool.shutdown()
        if self.tmp.exists() and not any(self.tmp.iterdir()):
            self.tmp.rmdir()
