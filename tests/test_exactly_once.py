"""Every cell exactly once, from its own training, run as a user runs it: `suite run` processes
started together on a new store and on an existing one; a `suite run` killed with SIGKILL (after
its first checkpoint, or in its evaluation) and run again; a fresh store beside another store's
checkpoints; a plugin edited between two runs; two budgets of one attention on the leaderboard.

Faults come from the code's own hooks: a variant kills its process once its cell's checkpoint
is on disk, another holds its first training step until the test opens a gate, so no sleep
races the training. Processes run under ``suite.executors.guard`` (they die with pytest) and
every wait is bounded."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from results.leaderboard import build
from results.offline import JsonlTracker
from results.offline import read as offline_read
from suite import settings
from suite.cli import main
from suite.executors.local import sweep
from suite.identity import source_files, suite_code, tree_code
from suite.run import plan

from .conftest import ROOT, Lines, runs

STEPS = 24  # smoke cells of 24 steps checkpoint every 6: a kill after the first is mid-training
# metrics that differ between attempts
TIMING = {"train_seconds", "tokens_per_s", "resumed_from", "eval_seconds", "cpu_seconds"}

FAULTS = '''
import os
import signal
import time
from pathlib import Path

import torch

import attentions
from suite import settings


def _once(folder, name):
    """True exactly once per folder and name (an O_EXCL marker)."""
    try:
        os.close(os.open(Path(folder) / name, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


@attentions.register("kill_test")
class KillsItsProcess(attentions.Attention):
    """softmax whose process kills itself (SIGKILL) once, when <checkpoints>/kill exists:
    right after its cell's first checkpoint, or, when that file names a step, in the evaluation
    after the checkpoint of that step (the end of training)."""

    def normalizer(self):
        return attentions.Normalizer("softmax")

    def forward(self, q, k, v, x=None, bias=None, causal=True):
        root = Path(settings.current().store.checkpoint_dir)
        last = sorted(root.glob("store-*/*/last.pt"))
        if (root / "kill").exists() and last and not (root / "killed").exists():
            at = (root / "kill").read_text().strip()
            due = not at or (not self.training and
                             torch.load(last[0], weights_only=False)["step"] == int(at))
            if due and _once(root, "killed"):
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(q, k, v, x=x, bias=bias, causal=causal)


@attentions.register("gate_test")
class WaitsAtTheGate(attentions.Attention):
    """softmax whose first training step (in any process) writes $SUITE_TEST_GATE/holding and
    waits until $SUITE_TEST_GATE/open exists (the input check of `suite run`, on 3 tokens,
    passes)."""

    def normalizer(self):
        return attentions.Normalizer("softmax")

    def forward(self, q, k, v, x=None, bias=None, causal=True):
        gate = Path(os.environ["SUITE_TEST_GATE"])
        if q.shape[2] >= 32 and _once(gate, "holding"):  # (B, H, T, D): a training batch
            deadline = time.monotonic() + 120
            while not (gate / "open").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the test never opened the gate")
                time.sleep(0.05)
        return super().forward(q, k, v, x=x, bias=bias, causal=causal)
'''


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "faults.py"
    path.write_text(FAULTS)
    return path


@pytest.fixture(scope="module")
def registered(faults):
    """The fault variants registered in this process too (to plan cells and name hashes)."""
    from attentions import REGISTRY, load_plugin

    load_plugin(str(faults))
    yield faults
    for name in ("kill_test", "gate_test"):
        REGISTRY.unregister(name)


def environment(**more) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in more.items()}}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class Suite(Lines):
    """`suite ARGS...` in a process of its own under the guard, its output read by line."""

    def __init__(self, argv: list[str], cwd: Path, env: dict):
        super().__init__(subprocess.Popen(
            [sys.executable, "-m", "suite.executors.guard", str(os.getpid()), "--",
             sys.executable, "-m", "suite", *argv],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True))

    def pid(self, timeout: float = 10) -> int:
        """The `suite` process (the guard's child)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.guard.pid:
                        return int(entry.name)
            time.sleep(0.05)
        raise AssertionError("the suite process did not start")

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.guard.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.guard.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.guard.pid, signal.SIGKILL)
            self.guard.wait(30)


def run_suite(argv, cwd, env, timeout: float = 240) -> tuple[int, str]:
    proc = Suite(argv, cwd, env)
    return proc.wait(timeout), proc.out


def by_config(uri: str, experiment: str = "flip_flop") -> dict[str, list]:
    found: dict[str, list] = {}
    for run in runs(uri, experiment):
        found.setdefault(run.data.tags["suite.config_hash"], []).append(run)
    return found


def exactly_once(found: dict[str, list]) -> dict[str, object]:
    """The one FINISHED run per config, asserting that no config has two and none is left
    RUNNING."""
    statuses = {h: Counter(r.info.status for r in rs) for h, rs in found.items()}
    for h, count in statuses.items():
        assert count["FINISHED"] == 1 and count["RUNNING"] == 0, (h, count)
    return {h: next(r for r in rs if r.info.status == "FINISHED") for h, rs in found.items()}


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


# ----------------------------------------------------------------------------- concurrency

SMOKE = ["run", "--profile", "smoke", "--no-progress"]


@pytest.mark.slow
def test_two_sweeps_at_once_train_every_cell_once(tmp_path, registered):
    """Two `suite run` started together on a brand-new store, then two on that store again with
    a cell that one of them holds while the other waits for it."""
    env = environment(SUITE_TEST_GATE=tmp_path / "gate")
    (tmp_path / "gate").mkdir()
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    argv = [*SMOKE, "--attention", "softmax", "--seeds", "3"]
    first = [Suite(argv, tmp_path, env) for _ in range(2)]  # at once, on no store yet
    codes = [p.wait() for p in first]
    assert codes == [0, 0], "\n".join(p.out[-2000:] for p in first)
    done = exactly_once(by_config(uri))
    assert len(done) == 3
    assert sum(p.out.count(": done in") for p in first) == 3  # each cell trained once

    argv = [*SMOKE, "--attention", "softmax", "--attention", "gate_test", "--plugin",
            str(registered)]
    holder = Suite(argv, tmp_path, env)
    try:
        holding = tmp_path / "gate" / "holding"
        deadline = time.monotonic() + 120
        while not holding.exists():  # the holder is inside the gate cell's first step
            assert holder.guard.poll() is None, holder.out[-3000:]
            assert time.monotonic() < deadline, "the gate cell never started"
            time.sleep(0.1)
        waiter = Suite(argv, tmp_path, env)
        waiter.wait_for(rf"gate_test .*: being trained by pid {holder.pid()} on ", 120)
        waiter.wait_for(r"waiting for 1 cell\(s\) that other processes train", 60)
        (tmp_path / "gate" / "open").touch()
        assert waiter.wait() == 0, waiter.out[-3000:]
        assert holder.wait() == 0, holder.out[-3000:]
    finally:
        holder.stop()
    assert re.search(r"gate_test .*: skipped, finished by another process", waiter.out)
    assert waiter.out.count("skipped, finished already") == 1  # softmax seed 0
    assert re.search(r"gate_test .*: done in", holder.out)
    assert len(exactly_once(by_config(uri))) == 4


@pytest.mark.slow
def test_two_sweeps_on_one_offline_log(tmp_path, registered):
    """The offline log follows the same rules: the cell one process holds, the other waits
    for and skips; one FINISHED run."""
    (tmp_path / "gate").mkdir()
    env = environment(SUITE_TEST_GATE=tmp_path / "gate")
    log = tmp_path / "gpu" / "runs.jsonl"
    argv = [*SMOKE, "--attention", "gate_test", "--plugin", str(registered),
            "--tracking-uri", f"jsonl:{log}"]
    holder = Suite(argv, tmp_path, env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "gate" / "holding").exists():
            assert holder.guard.poll() is None, holder.out[-3000:]
            assert time.monotonic() < deadline, "the gate cell never started"
            time.sleep(0.1)
        waiter = Suite(argv, tmp_path, env)
        waiter.wait_for(rf"being trained by pid {holder.pid()} on ", 120)
        (tmp_path / "gate" / "open").touch()
        assert waiter.wait() == 0, waiter.out[-3000:]
        assert holder.wait() == 0, holder.out[-3000:]
    finally:
        holder.stop()
    assert "skipped, finished by another process" in waiter.out
    tracker = JsonlTracker(f"jsonl:{log}")
    (cell,) = plan(["gate_test"], None, "smoke", 1, "cpu")
    assert len(tracker.runs("flip_flop", cell.config_hash)) == 1
    assert tracker.finished("flip_flop", cell.config_hash)


@pytest.mark.slow
def test_sigterm_to_a_sweep_with_workers_ends_its_runs_killed(tmp_path, registered):
    """SIGTERM (what `timeout` and batch schedulers send) to `suite run --jobs 2` while a worker
    trains: one line, no traceback; the worker's run goes into the log ended KILLED (not lost
    with the worker's temporary log, which goes too); the same command then trains the cell
    in a new run, FINISHED, beside the KILLED one."""
    gate = tmp_path / "gate"
    gate.mkdir()
    env = environment(SUITE_TEST_GATE=gate, TMPDIR=tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    log = tmp_path / "runs.jsonl"
    argv = [*SMOKE, "--attention", "gate_test", "--attention", "softmax", "--plugin",
            str(registered), "--jobs", "2", "--tracking-uri", f"jsonl:{log}"]
    first = Suite(argv, tmp_path, env)
    try:
        deadline = time.monotonic() + 120
        while not (gate / "holding").exists():  # the gate cell is in its first step
            assert first.guard.poll() is None, first.out[-3000:]
            assert time.monotonic() < deadline, "the gate cell never started"
            time.sleep(0.1)
        os.kill(first.pid(), signal.SIGTERM)
        assert first.wait(60) == 130, first.out[-3000:]
    finally:
        first.stop()
    assert "Traceback" not in first.out, first.out[-3000:]
    assert re.search(r"gate_test .*: interrupted; its run is marked KILLED", first.out)
    assert not list((tmp_path / "tmp").glob("suite-cells-*"))  # the worker logs went
    tracker = JsonlTracker(f"jsonl:{log}")
    (cell, _) = plan(["gate_test", "softmax"], None, "smoke", 1, "cpu")
    (killed,) = tracker.runs("flip_flop", cell.config_hash)
    assert tracker.runs("flip_flop", cell.config_hash, "KILLED") == [killed]

    (gate / "open").touch()
    code, out = run_suite(argv, tmp_path, env)
    assert code == 0, out[-3000:]
    assert re.search(r"gate_test .*: done in", out)
    (done,) = tracker.runs("flip_flop", cell.config_hash, "FINISHED")
    assert done != killed and tracker.runs("flip_flop", cell.config_hash, "KILLED") == [killed]
    assert not tracker.runs("flip_flop", status="RUNNING")


_IDLE_WORKER = """
import concurrent.futures as cf, multiprocessing, os, sys
from suite.executors import pool
if __name__ == "__main__":
    ex = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                initializer=pool._init, initargs=(os.getpid(), [], {}, 1))
    assert ex.submit(int, 1).result() == 1  # the worker is up, and idle from here on
    (proc,) = ex._processes.values()
    proc.terminate()  # SIGTERM, as Workers.close sends it
    # the pool's own thread reaps the dead worker too; read its exit code once that is done
    ex.shutdown(wait=True, cancel_futures=True)
    proc.join(30)
    print("exitcode", proc.exitcode)
"""


def test_sigterm_to_an_idle_worker_ends_it_quietly(tmp_path):
    """A worker waiting for its next cell when the sweep stops (its cells done, another still
    training) has no run to end: SIGTERM ends it at once, exit code 130, and no traceback
    (an interrupt raised there escaped the pool's loop and printed one)."""
    script = tmp_path / "idle_worker.py"
    script.write_text(_IDLE_WORKER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exitcode 130" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- kill -9

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, faults):
    """The kill_test cell run without a fault, in a store of its own: the numbers to match."""
    root = tmp_path_factory.mktemp("uninterrupted")
    env = environment(SUITE_CHECKPOINT_DIR=root / "ckpt")
    code, out = run_suite([*SMOKE, "--attention", "kill_test", "--plugin", str(faults),
                           "--steps", str(STEPS)], root, env)
    assert code == 0, out[-3000:]
    uri = f"sqlite:///{root}/results/mlflow.db"
    (run,) = exactly_once(by_config(uri)).values()
    return uri, run


def series(uri, run, keys=("train_loss", "lr", "val_exact_match", "val_token_acc")) -> dict:
    return {k: history(uri, run.info.run_id, k) for k in keys}


@pytest.mark.slow
@pytest.mark.parametrize("moment,store", [("checkpoint", "sqlite"), ("evaluation", "jsonl")])
def test_kill_9_then_rerun(tmp_path, faults, uninterrupted, moment, store):
    """A `suite run` killed with SIGKILL (right after its cell's first checkpoint, or in the
    evaluation after its training), then run again: one FINISHED run with the whole history
    and the numbers of an uninterrupted run; the killed attempt ends KILLED."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "kill").write_text("" if moment == "checkpoint" else str(STEPS))
    env = environment(SUITE_CHECKPOINT_DIR=ckpt)
    log = tmp_path / "runs.jsonl"
    where = ["--tracking-uri", f"jsonl:{log}"] if store == "jsonl" else []
    argv = [*SMOKE, "--attention", "kill_test", "--plugin", str(faults), "--steps", str(STEPS),
            *where]
    code, out = run_suite(argv, tmp_path, env)
    assert code == 256 - signal.SIGKILL, out[-3000:]  # the guard exits with the child's -9
    assert (ckpt / "killed").exists()
    code, out = run_suite(argv, tmp_path, env)  # the same command again
    assert code == 0, out[-3000:]
    assert re.search(r"the interrupted attempt \w+ is marked KILLED", out)
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    if store == "jsonl":  # the log itself: the killed attempt ended KILLED by its successor
        tracker = JsonlTracker(f"jsonl:{log}")
        (killed_id,) = tracker.runs("flip_flop", status="KILLED")
        (finished_id,) = tracker.runs("flip_flop", status="FINISHED")
        assert not tracker.runs("flip_flop", status="RUNNING")
        assert [rec["tags"]["suite.superseded_by"] for rec in offline_read(log)
                if rec["event"] == "end" and rec["run"] == killed_id] == [finished_id]
        assert main(["import", str(log), "--tracking-uri", uri]) == 0
    found = by_config(uri)
    (done,) = exactly_once(found).values()
    (killed,) = [r for rs in found.values() for r in rs if r.info.status != "FINISHED"]
    assert killed.info.status == "KILLED"
    if store == "sqlite":
        assert killed.data.tags["suite.superseded_by"] == done.info.run_id
    assert killed.data.tags["suite.error"].startswith("interrupted: its process ended")
    assert done.data.metrics["resumed_from"] == (6 if moment == "checkpoint" else STEPS)
    want_uri, want = uninterrupted
    assert done.data.tags["suite.config_hash"] == want.data.tags["suite.config_hash"]
    got_series, want_series = series(uri, done), series(want_uri, want)
    assert [s for s, _ in got_series["train_loss"]] == [10, 20, 24]  # from step 0 on
    assert [s for s, _ in got_series["val_exact_match"]] == [6, 12, 18, 24]
    assert got_series == want_series  # the whole history, value for value
    numbers = lambda r: {k: v for k, v in r.data.metrics.items() if k not in TIMING}  # noqa
    assert numbers(done) == numbers(want)  # final loss, best step, every length: the same
    assert not (ckpt / done.data.tags["suite.config_hash"]).exists()
    assert not list(ckpt.glob("store-*/*/last.pt"))  # finished: nothing resumes from it


# ----------------------------------------------------------------------------- stores, code

FLAKY = '''
import os
from pathlib import Path

import attentions
from suite import settings


@attentions.register("fails_once_test")
class FailsOnce(attentions.Attention):
    """softmax that raises once, after its cell's first checkpoint."""

    def normalizer(self):
        return attentions.Normalizer("softmax")

    def forward(self, q, k, v, x=None, bias=None, causal=True):
        root = Path(settings.current().store.checkpoint_dir)
        if list(root.glob("store-*/*/last.pt")) and not (root / "failed").exists():
            (root / "failed").touch()
            raise RuntimeError("a fault after the first checkpoint")
        return super().forward(q, k, v, x=x, bias=bias, causal=causal)
'''


def test_a_fresh_store_trains_from_step_0(tmp_path, monkeypatch):
    """Two stores share one checkpoint root; the first leaves a checkpoint of an unfinished
    cell; the second store, and a store made anew at the first one's path, train that config
    from step 0. The config hash names the plugin's code."""
    from attentions import REGISTRY, load_plugin

    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "shared-ckpt"
    monkeypatch.setenv("SUITE_CHECKPOINT_DIR", str(ckpt))
    settings.apply_environment()
    plugin = tmp_path / "flaky.py"
    plugin.write_text(FLAKY)
    a, b = f"sqlite:///{tmp_path}/a/mlflow.db", f"sqlite:///{tmp_path}/b/mlflow.db"
    load_plugin(str(plugin))
    cells = plan(["fails_once_test"], None, "smoke", 1, "cpu")
    run = lambda uri: sweep(cells, uri, progress=False, out=io.StringIO())  # noqa: E731
    try:
        assert run(a) == 1  # FAILED after its first checkpoint
        (left,) = ckpt.glob("store-*/*/last.pt")
        (failed,) = runs(a)
        assert failed.info.status == "FAILED"
        assert left.parent.name == failed.data.tags["suite.config_hash"]
        assert failed.data.params["code.attention"] not in ("builtin", "")
        assert run(b) == 0
        (run_b,) = runs(b)
        assert run_b.data.metrics["resumed_from"] == 0  # not the other store's step 6
        assert [s for s, _ in history(b, run_b.info.run_id, "train_loss")] == [10, 12]
        shutil.rmtree(tmp_path / "a")  # the store at a's path, made anew
        assert run(a) == 0
        (run_a,) = runs(a)
        assert run_a.data.metrics["resumed_from"] == 0
        assert left.exists()  # the old store's checkpoint, never read
        assert len(list(ckpt.glob("store-*"))) == 3  # one folder per store
    finally:
        REGISTRY.unregister("fails_once_test")


RELU = '''
import attentions


@attentions.register("relu_edit_test")
def relu(q, k, v, *, causal, bias):
    """relu attention, version {version}."""
    z = (q @ k.transpose(-1, -2)).relu() ** {power}
    return (z.tril() if causal else z) @ v / q.shape[2]
'''


@pytest.mark.slow
def test_an_edited_plugin_trains_again_and_ranks_apart(tmp_path):
    plugin = tmp_path / "relu.py"
    env = environment()
    argv = [*SMOKE, "--attention", "relu_edit_test", "--plugin", str(plugin)]
    outs = []
    for version, power in ((1, 1), (2, 2)):
        plugin.write_text(RELU.format(version=version, power=power))
        code, out = run_suite(argv, tmp_path, env)
        assert code == 0, out[-3000:]
        outs.append(out)
    assert "skipped" not in outs[1] and ": done in" in outs[1]  # trained again
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    done = exactly_once(by_config(uri))
    assert len(done) == 2
    codes = sorted(r.data.params["code.attention"] for r in done.values())
    assert codes[0] != codes[1] and {r.data.params["code.suite"] for r in done.values()} == \
        {suite_code()}
    tab, text = build(uri)
    labels = sorted(tab["attention"].unique().to_list())
    assert labels == sorted(f"relu_edit_test [code.attention={c[:8]}]" for c in codes)
    assert all(label in text for label in labels)


def test_the_code_identity_follows_the_sources_not_the_docs(tmp_path):
    tree = tmp_path / "tree"
    for name in ("attentions", "tasks", "suite"):
        shutil.copytree(ROOT / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert tree_code(tree) == suite_code()
    names = [name for name, _ in source_files(tree)]
    assert "attentions/backends/numba_kernels.py" in names and "suite/train.py" in names
    assert "suite/cli.py" not in names
    notes = tree / "attentions" / "backends" / "NUMBA_NOTES.md"
    notes.write_text(notes.read_text() + "\nA note.\n")
    (tree / "suite" / "cli.py").write_text("# the command line changes no result\n")
    assert tree_code(tree) == suite_code()
    kernel = tree / "attentions" / "backends" / "numba_kernels.py"
    kernel.write_text(kernel.read_text() + "\n# a changed kernel\n")
    assert tree_code(tree) != suite_code()
    (cell,) = plan(["entmax"], None, "smoke", 1, "cpu")
    assert cell.config()["code.suite"] == suite_code()
    assert cell.config()["code.attention"] == cell.config()["code.task"] == "builtin"


def test_the_leaderboard_never_mixes_budgets(store):
    """Seeds 0 and 1 at the default 12 steps, seed 0 again at 24: two rows, each saying its
    budget, never one row of 'seeds=2' averaging both."""
    for seeds, budget in ((2, {}), (1, {"steps": 24})):
        cells = plan(["softmax"], None, "smoke", seeds, "cpu", **budget)
        assert sweep(cells, store, progress=False, out=io.StringIO()) == 0
    tab, text = build(store)
    rows = {(r["attention"], r["length"]): r for r in tab.iter_rows(named=True)}
    assert {a for a, _ in rows} == {"softmax [steps=12]", "softmax [steps=24]"}
    assert {r["seeds"] for (a, _), r in rows.items() if a.endswith("12]")} == {2}
    assert {r["seeds"] for (a, _), r in rows.items() if a.endswith("24]")} == {1}
    (long,) = [r for r in runs(store) if r.data.params["train.steps"] == "24"]
    for (att, n), row in rows.items():
        if att.endswith("24]"):
            assert row["exact_match_mean"] == long.data.metrics[f"exact_match_L{n}"]
    assert "softmax [steps=24]" in text and "softmax [steps=12]" in text


_CALLBACK_INTERRUPT = """
import signal, sys, time, weakref
from suite.executors import pool
signal.signal(signal.SIGTERM, pool._stop)
if sys.argv[1] == "hook":
    sys.unraisablehook = pool._unraisable
pool._BUSY = True
class A: pass
a = A()
def callback(_): raise KeyboardInterrupt  # as _stop raises when SIGTERM lands in a callback
ref = weakref.ref(a, callback)
try:
    del a
    time.sleep(float(sys.argv[2]))  # ends early when the interrupt comes
    print("lost")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("hook", [True, False])
def test_an_interrupt_inside_a_callback_is_sent_again(tmp_path, hook):
    """A worker's interrupt that lands in a weakref callback (where SIGTERM during an import once
    landed: a traceback printed, the interrupt lost) is raised again outside it, quietly; without
    the worker's hook it is lost, which is what the hook is for."""
    script = tmp_path / "callback.py"
    script.write_text(_CALLBACK_INTERRUPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # with the hook the interrupt ends the sleep (60 s only bounds a failure); without it
    # nothing can end it, so a short sleep shows the loss
    argv = ["hook", "60"] if hook else ["none", "0.5"]
    done = subprocess.run([sys.executable, str(script), *argv], env=env,
                          capture_output=True, text=True, timeout=120)
    if hook:
        assert done.stdout.strip() == "interrupted" and "Traceback" not in done.stderr, done
    else:
        assert done.stdout.strip() == "lost" and "Traceback" in done.stderr, done
