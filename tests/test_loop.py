"""The sweep's loop (``suite.executors.loop``) with trivial executors over a store kept in memory
and a real claims folder: two sweeps at once train each cell once, the later one waiting for
the cells the other holds and skipping them once finished, whether the loop claims the cells
(as the local executor does) or the started cell claims itself (as a Ray task does); a cell
found held by its task waits and starts again; a dead holder's claim is taken over; a cell
that finished between the look and the claim is skipped; failures are counted; an interrupt
closes the executor and leaves no claim. Events, not sleeps, line the threads up; every wait
is bounded."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
from collections import Counter

import pytest

from results.claims import Claims, Holder
from suite.attempts import StoreHome
from suite.executors import loop
from suite.executors.loop import Executor, Job, Outcome, sweep_loop
from suite.run import plan

WAIT_S = 60  # a bound on every wait: a hang fails the test instead of stalling it


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(loop, "POLL_S", 0.01)


@pytest.fixture(scope="module")
def cells():
    return plan(["softmax"], None, "smoke", 4, "cpu")  # four configs (seeds 0..3)


@pytest.fixture
def home(tmp_path) -> StoreHome:
    return StoreHome("store-test", tmp_path / "claims", tmp_path / "checkpoints")


class Store:
    """What the loop reads of a store: the FINISHED run of a config hash. ``script`` gives, per
    hash, the answers of its first looks (a run that another process finishes meanwhile)."""

    def __init__(self, done=(), script=None):
        self.done = {h: f"run-{h[:6]}" for h in done}
        self.script = {h: list(answers) for h, answers in (script or {}).items()}
        self.lock = threading.Lock()

    def finished(self, experiment: str, config_hash: str) -> str | None:
        with self.lock:
            if self.script.get(config_hash):
                return self.script[config_hash].pop(0)
            return self.done.get(config_hash)

    def finish(self, config_hash: str) -> None:
        with self.lock:
            self.done[config_hash] = f"run-{config_hash[:6]}"


class Output:
    """A sweep's lines, with a wait for the first that holds some text."""

    def __init__(self):
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self.changed:
            self.lines.append(line)
            self.changed.notify_all()

    def wait_for(self, text: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(text in ln for ln in self.lines), WAIT_S), \
                (text, self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


class Trainer:
    """The cells' training, shared by every sweep of a test: it counts who trained what, holds
    at ``gate`` until the test opens it, and marks the cell FINISHED in the store."""

    def __init__(self, store: Store, expected: int = 0):
        self.store, self.expected = store, expected
        self.trained: Counter = Counter()
        self.by: dict[str, list[str]] = {}
        self.gate, self.all_started = threading.Event(), threading.Event()
        self.lock = threading.Lock()

    def __call__(self, who: str, job: Job) -> Outcome:
        with self.lock:
            self.trained[job.cell.config_hash] += 1
            self.by.setdefault(who, []).append(job.cell.config_hash)
            if sum(self.trained.values()) == self.expected:
                self.all_started.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        self.store.finish(job.cell.config_hash)
        return Outcome(job, "done", seconds=1.0, ladder="64:100.0")


class InThreads(Executor):
    """Each cell in a thread of its own, its outcome collected later (as the worker pool and
    Ray do). ``claims_in_task``: the thread claims the cell, as a Ray task does, and reports
    it busy when another holds it; the loop then only looks at the claim (``look``, else it
    does not look at all)."""

    def __init__(self, who, store, home, say, train, claims_in_task=False, look=True):
        super().__init__(store, home, say)
        self.who, self.train = who, train
        self.claims_in_task, self.look = claims_in_task, look
        self.started: Counter = Counter()
        self.running = 0
        self.outcomes: queue.Queue = queue.Queue()
        self.closed = False

    def claim(self, cell):
        if not self.claims_in_task:
            return super().claim(cell)
        return self.home.claims.holder(cell.config_hash) if self.look else None

    def run(self, job: Job) -> None:
        self.started[job.cell.config_hash] += 1
        self.running += 1
        threading.Thread(target=self._task, args=(job,), daemon=True).start()

    def _task(self, job: Job) -> None:
        """The cell's outcome, reported once its claim is released (as the real tasks do)."""
        if not self.claims_in_task:
            with job.claim:
                outcome = self.train(self.who, job)
            self.outcomes.put(outcome)
            return
        claim = self.home.claims.claim(job.cell.config_hash, job.cell.name)
        if isinstance(claim, Holder):
            self.outcomes.put(Outcome(job, "busy", holder=str(claim)))
            return
        with claim:
            if self.store_finished(job):
                outcome = Outcome(job, "duplicate", run="meanwhile")
            else:
                outcome = self.train(self.who, job)
        self.outcomes.put(outcome)

    def store_finished(self, job: Job) -> bool:
        return self.tracker.finished("flip_flop", job.cell.config_hash) is not None

    @property
    def busy(self) -> bool:
        return self.running > 0

    def collect(self, timeout):
        try:
            got = [self.outcomes.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(self.outcomes.get_nowait())
        self.running -= len(got)
        return got

    def close(self) -> None:
        self.closed = True


class Here(Executor):
    """Each cell run to its end in ``run`` itself (as the local executor trains in its own
    process): ``outcome(job)`` says how it ends."""

    def __init__(self, store, home, say, outcome):
        super().__init__(store, home, say)
        self.outcome = outcome
        self.ran: list[Job] = []
        self.took_over: dict[str, Holder | None] = {}
        self.closed = False

    def run(self, job: Job) -> Outcome:
        self.ran.append(job)
        self.took_over[job.cell.config_hash] = job.claim.took_over
        with job.claim:
            return self.outcome(job)

    def close(self) -> None:
        self.closed = True


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as err:  # the test names it
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def joined(thread: threading.Thread, result: dict):
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the sweep did not end"
    assert "error" not in result, result["error"]
    return result["value"]


def no_claims_left(home: StoreHome) -> bool:
    return not list(home.claims_dir.glob("*.claim"))


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("claims_in_task", [False, True], ids=["loop-claims", "task-claims"])
def test_two_sweeps_at_once_train_each_cell_once(cells, home, claims_in_task):
    """Cell 0 finished already; the first sweep holds cells 1-3 (training at a gate) when the
    second starts: the second skips cell 0, says who holds the others, waits, and skips them
    once the first has finished them. Each cell trained once, by the first sweep."""
    store = Store(done=[cells[0].config_hash])
    train = Trainer(store, expected=3)
    first_out, second_out = Output(), Output()
    first = InThreads("first", store, home, first_out, train, claims_in_task)
    second = InThreads("second", store, home, second_out, train, claims_in_task)

    first_run = in_thread(sweep_loop, first, cells)
    assert train.all_started.wait(WAIT_S), first_out.lines  # cells 1-3 are held, training
    second_run = in_thread(sweep_loop, second, cells)
    second_out.wait_for("waiting for 3 cell(s) that other processes train")
    train.gate.set()
    assert joined(*first_run) == 0 and joined(*second_run) == 0

    assert train.trained == Counter({c.config_hash: 1 for c in cells[1:]})
    assert list(train.by) == ["first"] and not second.started
    assert first_out.count(": done in 1s  64:100.0") == 3
    assert first_out.count("skipped, finished already") == 1
    assert second_out.count("skipped, finished already") == 1
    assert second_out.count(f"being trained by pid {os.getpid()} on ") == 3
    assert second_out.count("skipped, finished by another process") == 3
    assert first.closed and second.closed and no_claims_left(home)


def test_a_cell_its_task_finds_held_waits_then_starts_again(cells, home):
    """The task, not the loop, claims the cell (as a Ray task does) and finds it held: the
    loop says by whom and waits; when the holder lets go without finishing it, the cell is
    started again and trained here."""
    store = Store()
    train = Trainer(store)
    train.gate.set()
    out = Output()
    holder = Claims(home.claims_dir).claim(cells[0].config_hash, "another sweep")
    executor = InThreads("tasks", store, home, out, train, claims_in_task=True, look=False)
    run = in_thread(sweep_loop, executor, cells[:1])
    out.wait_for("being trained by")
    holder.release()  # let go without finishing it
    assert joined(*run) == 0
    assert executor.started[cells[0].config_hash] == 2  # busy once, then trained
    assert train.trained == Counter({cells[0].config_hash: 1})
    assert out.count(": done in") == 1 and no_claims_left(home)


def test_takeover_recheck_failures_and_a_cell_held_until_the_end(cells, home):
    """Run here, one cell at a time: cell 0's claim belongs to a dead process (taken over),
    cell 1 finishes elsewhere between the look and the claim (skipped, never run), cell 2
    fails (counted), cell 3 is held by a live process until the others are done, then let go
    unfinished (trained here). The lines say each, the superseded runs included."""
    c0, c1, c2, c3 = cells
    store = Store(script={c1.config_hash: [None, None, "run-elsewhere"]})
    claims = Claims(home.claims_dir)
    me = Holder.me("a process that died")
    dead = Holder(me.host, me.boot, me.pid, str(int(me.start) + 1), 0.0, "dead", me.what)
    claims._write(c0.config_hash, dead)  # a pid now reused: its holder is gone
    live = claims.claim(c3.config_hash, "another sweep")
    out = Output()

    def outcome(job: Job) -> Outcome:
        if job.cell is c2:
            return Outcome(job, "failed", error="RuntimeError: boom", superseded=("old-run",))
        store.finish(job.cell.config_hash)
        return Outcome(job, "done", seconds=2.0, ladder="64:50.0")

    executor = Here(store, home, out, outcome)
    releaser = in_thread(lambda: (out.wait_for("waiting for 1 cell(s)"), live.release()))
    assert sweep_loop(executor, cells) == 1
    joined(*releaser)

    assert [job.cell for job in executor.ran] == [c0, c2, c3]
    assert executor.took_over[c0.config_hash] == dead
    assert executor.took_over[c3.config_hash] is None  # let go, not dead
    lines = out.lines
    assert any(line.startswith("[1/4] ") and "taking over from pid" in line and
               line.endswith("which is gone") for line in lines), lines
    assert any(line.startswith("[2/4] ") and "skipped, finished by another process (config "
               f"{c1.config_hash}, run run-elsewhere)" in line for line in lines), lines
    (i,) = [i for i, line in enumerate(lines) if "attempt old-run is marked KILLED" in line]
    assert lines[i].startswith("[3/4] ") and lines[i + 1].startswith("[3/4] ") and \
        lines[i + 1].endswith(": FAILED: RuntimeError: boom"), lines
    assert any(line.startswith("[4/4] ") and "being trained by" in line for line in lines)
    assert out.count(": done in 2s  64:50.0") == 2 and executor.closed
    assert no_claims_left(home)


def test_an_interrupt_closes_the_executor_and_leaves_no_claim(cells, home):
    def outcome(job: Job) -> Outcome:
        raise KeyboardInterrupt

    executor = Here(Store(), home, io.StringIO().write, outcome)
    with pytest.raises(KeyboardInterrupt):
        sweep_loop(executor, cells)
    assert executor.closed and len(executor.ran) == 1 and no_claims_left(home)


def test_the_executors_modules_import_no_cycle():
    """No module of suite/executors imports, even inside a function, one that imports it back
    (directly or through others)."""
    from .conftest import ROOT
    from .test_layout import imports

    folder = ROOT / "suite" / "executors"
    names = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    edges = {name: {m.rsplit(".", 1)[1] for m, _ in imports(folder / f"{name}.py")
                    if m.startswith("suite.executors.") and m.rsplit(".", 1)[1] in names}
             for name in names}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in edges[start])

    cycles = sorted(name for name in names if reaches(name, name, {name}))
    assert not cycles, edges
