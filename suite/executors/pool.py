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


def _work(cell: Cell, log_uri: str) -> dict:
    """One cell in a worker, logged to ``log_uri`` (an offline log)."""
    from results.offline import JsonlTracker

    from ..run import ladder, run_cell

    t0 = time.perf_counter()
    try:
        results = run_cell(cell, JsonlTracker(log_uri), progress=False)
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


def sweep_parallel(cells: list[tuple[str, Cell]], tracker, jobs: int, say) -> int:
    """Run ``cells`` ((heading, cell) pairs, none finished yet) on ``jobs`` worker processes;
    returns how many failed."""
    from .ray import plugins_for

    env = dict(os.environ)
    cpu.apply(env)  # what a worker's _init sets
    say(f"{jobs} worker processes, {cpu.threads()} torch thread(s) each; CPU settings: "
        + (", ".join(f"{k}={env[k]!r}" for k in cpu.PINS if k in env) or "the CPU's own"))
    failed = 0
    tmp = Path(tempfile.mkdtemp(prefix="suite-cells-"))
    pool = cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init,
                                  initargs=(os.getpid(), plugins_for([c for _, c in cells])))
    try:
        running = {}
        for i, (head, cell) in enumerate(cells):
            log = tmp / f"cell-{i}.jsonl"
            running[pool.submit(_work, cell, f"jsonl:{log}")] = (head, log)
        for fut in cf.as_completed(running):
            head, log = running[fut]
            result = fut.result()
            _store(tracker, log)
            if result["status"] == "failed":
                failed += 1
                say(f"{head}: FAILED: {result['error']}")
            else:
                say(f"{head}: done in {result['seconds']:.0f}s  {result['ladder']}")
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        raise
    pool.shutdown()
    if not any(tmp.iterdir()):
        tmp.rmdir()
    return failed
