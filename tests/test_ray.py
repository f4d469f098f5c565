"""The Ray executor on a real local Ray cluster (2 CPUs): a smoke sweep gives the local
executor's metrics exactly; a worker killed mid-cell is retried and resumes from its
checkpoint; a driver killed with ``kill -9`` mid-sweep (with its whole Ray cluster) loses
nothing, and the same command run again finishes every cell exactly once; a cell that a local
`suite run` holds, the driver waits for and skips. The kills happen at
the code's own checkpoints (variants that act in the training step, see ``FAULTS``), never by
a poll loop racing the training. Every process a test starts is stopped by its id, with
bounded waits."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs ray (pip install '.[ray]')",
                         exc_type=ImportError)

import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from results.schema import HASH  # noqa: E402
from results.ui import free_port  # noqa: E402
from suite import settings  # noqa: E402
from suite.executors.local import sweep  # noqa: E402
from suite.executors.ray import sweep_ray  # noqa: E402
from suite.run import plan  # noqa: E402

from .conftest import Lines  # noqa: E402

TIMING = {"train_seconds", "tokens_per_s", "eval_seconds", "cpu_seconds"}  # clock metrics
STEPS = 24  # the smoke profile then checkpoints every 6 steps: a kill after the first one
# lands mid-training

# Kills and stalls driven by the code's own checkpoints, not by a poll loop racing the training:
# these variants act in the worker's own training step, once the cell's first checkpoint (the
# one at step 6) is on disk. The test names the victim cell by writing its config hash into
# the checkpoint directory; a marker makes each act happen once per sweep directory.
FAULTS = '''
import os
import signal
import time
from pathlib import Path

import attentions
from suite import settings


def _after_first_checkpoint(role):
    """True exactly once: in the victim cell (named by <ckpt>/<role>), after its first
    checkpoint is written."""
    ckpt = Path(settings.current().store.checkpoint_dir)
    victim = (ckpt / role).read_text().strip()
    if not any(ckpt.glob(f"*/{victim}/last.pt")):  # <root>/<store id>/<config hash>/
        return False
    try:
        os.close(os.open(ckpt / f"{role}.done", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


@attentions.register("kill_ray_test")
class KillsItsWorker(attentions.Attention):
    """softmax whose worker kills itself (SIGKILL) right after its first checkpoint."""

    def normalizer(self):
        return attentions.Normalizer("softmax")

    def forward(self, q, k, v, x=None, bias=None, causal=True):
        if _after_first_checkpoint("kill-victim"):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(q, k, v, x=x, bias=bias, causal=causal)


@attentions.register("stall_ray_test")
class StallsAfterCheckpoint(attentions.Attention):
    """softmax that stops in its training step right after its first checkpoint (until its
    process is killed), so that the cell is mid-training when the test kills the sweep."""

    def normalizer(self):
        return attentions.Normalizer("softmax")

    def forward(self, q, k, v, x=None, bias=None, causal=True):
        if _after_first_checkpoint("stall-victim"):
            Path(settings.current().store.checkpoint_dir, "stalled").touch()
            time.sleep(600)  # the test kills this process long before
        return super().forward(q, k, v, x=x, bias=bias, causal=causal)
'''


@pytest.fixture
def faults(tmp_path):
    """The fault variants, registered here (to plan cells) and loaded by the workers."""
    from attentions import REGISTRY, load_plugin

    path = tmp_path / "faults.py"
    path.write_text(FAULTS)
    load_plugin(str(path))
    yield path
    for name in ("kill_ray_test", "stall_ray_test"):
        REGISTRY.unregister(name)


# ---------------------------------------------------------------- processes, by id


def _ppids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> set[int]:
    ppids, found, todo = _ppids(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, pp in ppids.items():
            if pp == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_all(pids, sig=signal.SIGKILL) -> None:
    for pid in [p for p in pids if alive(p)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {p for p in pids if alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {p for p in left if alive(p)}
    return left


def guarded(cmd: list[str], **kw) -> subprocess.Popen:
    """``cmd`` under suite.executors.guard in a session of its own: it dies with this process even
    when pytest itself is killed."""
    return subprocess.Popen([sys.executable, "-m", "suite.executors.guard", str(os.getpid()), "--",
                             *cmd], start_new_session=True, **kw)


def child_of(guard: subprocess.Popen, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [p for p, pp in _ppids().items() if pp == guard.pid]
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("the guarded command did not start")


class Cluster:
    """`ray start --head --block` (2 CPUs) on free ports."""

    def __init__(self, root: Path, env: dict):
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.log = root / "ray-start.log"
        exe = Path(sys.executable).with_name("ray")
        cmd = [str(exe), "start", "--head", "--block", "--port", str(port),
               "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0",
               "--include-dashboard", "false", "--disable-usage-stats",
               "--object-store-memory", str(200 << 20), "--temp-dir", str(root / "ray"),
               "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()),
               "--metrics-export-port", str(free_port())]
        self.guard = guarded(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.head = child_of(self.guard)
        self.seen: set[int] = {self.guard.pid, self.head}
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in self.log.read_text():
            assert self.guard.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "ray start: no cluster within 90 s"
            time.sleep(0.5)

    def processes(self) -> set[int]:
        self.seen |= descendants(self.guard.pid)
        return self.seen

    def stop(self) -> None:
        pids = self.processes()
        kill_all([self.head], signal.SIGTERM)  # --block: it stops what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.guard.wait(20)
        kill_all(wait_gone(pids, 2))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.guard.wait(5)
        assert not wait_gone(pids, 10), "Ray processes survived the cluster's stop"


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    # No token for a throwaway cluster of one test module (a driver that connects by address
    # sends no token unless RAY_AUTH_MODE=token was set before Ray loaded its config).
    c = Cluster(root, {**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- the store


def finished_runs(uri: str, experiment: str = "flip_flop") -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    by_hash: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        by_hash.setdefault(run.data.tags[HASH], []).append(run)
    return by_hash


def only_finished(by_hash: dict[str, list]) -> dict[str, object]:
    """The one FINISHED run per config hash (asserting there is exactly one)."""
    out = {}
    for h, runs in by_hash.items():
        done = [r for r in runs if r.info.status == "FINISHED"]
        assert len(done) == 1, f"config {h}: {len(done)} FINISHED runs"
        out[h] = done[0]
    return out


def deterministic(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k not in TIMING}


# ---------------------------------------------------------------- tests


def test_ray_sweep_matches_local_executor(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cells = plan(["softmax", "entmax:alpha=1.5"], None, "smoke", 1, "cpu")
    local, remote = f"sqlite:///{tmp_path}/local.db", f"sqlite:///{tmp_path}/ray.db"
    monkeypatch.setenv("SUITE_CHECKPOINT_DIR", str(tmp_path / "ckpt-local"))
    settings.apply_environment()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray cell's CPU share: 1 CPU, 1 thread
    try:
        assert sweep(cells, local, progress=False, out=io.StringIO()) == 0
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("SUITE_CHECKPOINT_DIR", "ckpt-ray")  # relative: made absolute
    settings.apply_environment()
    # a driver's training-step setting reaches the Ray workers (tagged on their runs)
    settings.use(settings.changed(settings.current(), ["step.data_workers=0"]))
    out = io.StringIO()
    assert sweep_ray(cells, remote, cluster.address, progress=False, out=out) == 0
    text = out.getvalue()
    assert "via mlflow server http://127.0.0.1:" in text and text.count(": done in") == 2
    assert (tmp_path / "ckpt-ray").is_dir()

    want, got = only_finished(finished_runs(local)), only_finished(finished_runs(remote))
    assert set(got) == set(want) == {c.config_hash for c in cells}
    for h, run in got.items():
        assert deterministic(run) == deterministic(want[h])  # bit for bit
        said = run.data.tags["suite.settings"]
        assert said.startswith("step.data_workers=0 store.checkpoint_dir=")
        assert want[h].data.tags["suite.settings"].startswith("store.checkpoint_dir=")
        assert "exact_match_L128" in run.data.metrics
        assert run.data.params == want[h].data.params
        assert run.data.tags["suite.executor"] == "ray"
        names = [a.path for a in MlflowClient(remote).list_artifacts(run.info.run_id)]
        # written beside the database, as the local executor writes them
        assert names == ["eval.json", "eval_table.json"]

    # an attempt whose worker Ray lost (and reran) leaves a KILLED run beside the FINISHED one;
    # nothing else may be there
    before = [r for v in finished_runs(remote).values() for r in v]
    extra = [(r.info.status, r.data.tags.get("suite.superseded_by"), r.data.tags.get("suite.error"))
             for r in before if r.info.status != "FINISHED"]
    assert all(status == "KILLED" and by for status, by, _ in extra), (extra, text)

    out = io.StringIO()  # the same sweep again: nothing to do, no run added
    assert sweep_ray(cells, remote, cluster.address, progress=False, out=out) == 0
    assert out.getvalue().count("skipped, finished already") == 2
    after = [r for v in finished_runs(remote).values() for r in v]
    assert len(after) == len(before), (len(before), len(after), extra, text, out.getvalue())


def test_killed_worker_is_retried_and_resumes(cluster, tmp_path, monkeypatch, faults):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ckpt"
    monkeypatch.setenv("SUITE_CHECKPOINT_DIR", str(ckpt))
    settings.apply_environment()
    cells = plan(["softmax", "kill_ray_test"], None, "smoke", 1, "cpu", steps=STEPS)
    victim = cells[1]
    ckpt.mkdir()
    (ckpt / "kill-victim").write_text(victim.config_hash)
    out = io.StringIO()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert sweep_ray(cells, uri, cluster.address, progress=False, out=out) == 0, out.getvalue()
    assert (ckpt / "kill-victim.done").exists(), "the victim's worker never killed itself"
    by_hash = finished_runs(uri)
    done = only_finished(by_hash)
    assert set(done) == {c.config_hash for c in cells}
    assert done[victim.config_hash].data.metrics["resumed_from"] == 6  # the first checkpoint
    assert done[cells[0].config_hash].data.metrics["resumed_from"] == 0
    leftovers = [r for r in by_hash[victim.config_hash] if r.info.status != "FINISHED"]
    assert [r.info.status for r in leftovers] == ["KILLED"], [  # the killed attempt, superseded
        (r.info.status, r.data.tags.get("suite.error")) for r in leftovers]
    assert leftovers[0].data.tags["suite.superseded_by"] == done[victim.config_hash].info.run_id


class Sweep(Lines):
    """`suite run --executor ray` in a subprocess of its own session, stdout read by line."""

    def __init__(self, argv, cwd: Path, env: dict):
        super().__init__(guarded([sys.executable, "-m", "suite", "run", *argv], cwd=cwd,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True))
        self.pid = child_of(self.guard)  # the driver


def test_killed_driver_then_rerun_finishes_every_cell_once(tmp_path, faults):
    from results.leaderboard import build

    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "SUITE_RAY_NUM_CPUS": "2", "SUITE_CHECKPOINT_DIR": str(ckpt)}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = ["--profile", "smoke", "--attention", "softmax", "--attention", "stall_ray_test",
            "--plugin", str(faults), "--steps", str(STEPS), "--executor", "ray",
            "--no-progress"]
    cells = plan(["softmax", "stall_ray_test"], None, "smoke", 1, "cpu", steps=STEPS)
    hashes = {c.config_hash for c in cells}
    ckpt.mkdir()
    (ckpt / "stall-victim").write_text(cells[1].config_hash)
    first = Sweep(argv, tmp_path, env)
    seen: set[int] = {first.guard.pid, first.pid}
    try:
        server = first.wait_for(r"leaderboard while it runs: .* (http://\S+)", 120).group(1)
        first.wait_for(r"softmax .*: done in", 180)
        tab, text = build(server)  # the leaderboard renders while the sweep runs
        assert tab.height >= 1 and "flip_flop" in text
        deadline = time.monotonic() + 120  # the other cell stops after its first checkpoint
        while not (ckpt / "stalled").exists():
            assert time.monotonic() < deadline, "the stalling cell never reached its checkpoint"
            assert first.guard.poll() is None, "".join(first.text)[-3000:]
            time.sleep(0.2)
        seen |= descendants(first.guard.pid)
        server_guard = [p for p in seen
                        if "suite.executors.guard" in cmdline(p) and p != first.guard.pid]
        server_pids = descendants(server_guard[0]) | set(server_guard)
        # at once, the driver and its Ray cluster by id, while a cell is past a checkpoint
        os.kill(first.pid, signal.SIGKILL)
        kill_all(seen - server_pids)
        first.guard.wait(10)  # the test's guard follows its child
        assert not wait_gone(server_pids, 30), "the tracking server outlived its driver"
        assert not wait_gone(seen, 20)
    finally:
        seen |= descendants(first.guard.pid)
        kill_all(seen)
        first.guard.wait(10)

    uri = f"sqlite:///{tmp_path}/results/mlflow.db"  # readable after the kill
    before = finished_runs(uri)
    assert [r.info.status for r in before[cells[1].config_hash]] == ["RUNNING"]
    assert [r.info.status for r in before[cells[0].config_hash]] == ["FINISHED"]

    second = Sweep(argv, tmp_path, env)
    try:
        assert second.guard.wait(240) == 0, "".join(second.text)[-3000:]
    finally:
        leftover = descendants(second.guard.pid) | {second.pid}
        kill_all(leftover | {second.guard.pid})
        second.guard.wait(10)
    text = "".join(second.text)
    assert text.count("skipped, finished already") == 1  # the softmax cell
    by_hash = finished_runs(uri)
    done = only_finished(by_hash)  # every cell exactly once
    assert set(done) == hashes
    for run in done.values():  # nothing lost: every length of the ladder is there
        assert {"exact_match_L64", "exact_match_L128", "token_acc_L128"} <= set(run.data.metrics)
    assert done[cells[1].config_hash].data.metrics["resumed_from"] == 6  # its checkpoint
    statuses = [r.info.status for runs in by_hash.values() for r in runs]
    assert "RUNNING" not in statuses  # the interrupted runs were superseded (KILLED)


PLUGIN = '''
import os
from pathlib import Path

import attentions
from suite import settings


@attentions.register("nan_attention_ray_test")
def nan_attention(q, k, v, *, causal, bias):
    """returns NaN: a deterministic failure, recorded without a retry."""
    return v * float("nan")


@attentions.register("flaky_attention_ray_test")
def flaky_attention(q, k, v, *, causal, bias):
    """fails on its first call in the whole sweep (a marker file remembers), then is plain."""
    marker = Path(settings.current().store.checkpoint_dir) / "flaky-failed-once"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError("a transient fault")
    return v
'''


def test_exceptions_are_retried_then_recorded_failed(cluster, tmp_path, monkeypatch):
    from attentions import REGISTRY, load_plugin

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUITE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    settings.apply_environment()
    plugin = tmp_path / "faulty_plugin.py"
    plugin.write_text(PLUGIN)
    load_plugin(str(plugin))  # as `suite run --plugin` does; workers load the same file
    try:
        cells = plan(["nan_attention_ray_test", "flaky_attention_ray_test"], None, "smoke", 1,
                     "cpu")
        out = io.StringIO()
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        assert sweep_ray(cells, uri, cluster.address, progress=False, out=out) == 1
    finally:
        for name in ("nan_attention_ray_test", "flaky_attention_ray_test"):
            REGISTRY.unregister(name)
    text = out.getvalue()
    assert "FAILED: NonFiniteLoss" in text and "attempt 1 failed (RuntimeError" in text, text
    by_hash = finished_runs(uri)
    nan, flaky = (by_hash[c.config_hash] for c in cells)
    assert [r.info.status for r in nan] == ["FAILED"]  # deterministic: no retry
    assert "loss is nan" in nan[0].data.tags["suite.error"]
    assert sorted(r.info.status for r in flaky) == ["FAILED", "FINISHED"]
    failed = next(r for r in flaky if r.info.status == "FAILED")
    assert failed.data.tags["suite.error"] == "RuntimeError: a transient fault"


def test_a_cell_another_process_holds_is_waited_for(cluster, tmp_path, monkeypatch):
    """A local `suite run` holds a cell (its first step waits at a gate) when a Ray sweep on the
    same store reaches it: the driver says who holds it and waits, and once the holder has
    finished, skips it. One FINISHED run."""
    from attentions import REGISTRY, load_plugin

    from .test_exactly_once import FAULTS as HOLDS
    from .test_exactly_once import Suite, environment

    monkeypatch.chdir(tmp_path)
    gate = tmp_path / "gate"
    gate.mkdir()
    plugin = tmp_path / "holds.py"
    plugin.write_text(HOLDS)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("SUITE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("SUITE_TEST_GATE", str(gate))
    settings.apply_environment()
    holder = Suite(["run", "--profile", "smoke", "--attention", "gate_test", "--plugin",
                    str(plugin), "--tracking-uri", uri, "--no-progress"], tmp_path,
                   environment())
    load_plugin(str(plugin))
    try:
        deadline = time.monotonic() + 120
        while not (gate / "holding").exists():
            assert holder.guard.poll() is None, holder.out[-3000:]
            assert time.monotonic() < deadline, "the gate cell never started"
            time.sleep(0.1)
        pid = holder.pid()
        cells = plan(["gate_test"], None, "smoke", 1, "cpu")
        out = io.StringIO()

        def open_gate():  # once the driver has said that it waits
            deadline = time.monotonic() + 120
            while "being trained by pid" not in out.getvalue() and time.monotonic() < deadline:
                time.sleep(0.1)
            (gate / "open").touch()

        opener = threading.Thread(target=open_gate, daemon=True)
        opener.start()
        assert sweep_ray(cells, uri, cluster.address, progress=False, out=out) == 0
        opener.join(10)
        assert holder.wait() == 0, holder.out[-3000:]
    finally:
        holder.stop()
        for name in ("kill_test", "gate_test"):
            REGISTRY.unregister(name)
    text = out.getvalue()
    assert f"being trained by pid {pid} on " in text, text
    assert "skipped, finished by another process" in text
    (runs,) = finished_runs(uri).values()
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert "suite.executor" not in runs[0].data.tags  # the local process trained it
