"""Bad input, run as a user runs it: `python -m suite ...` in a process of its own. Each is
refused before any work, with exit 2 and one line on stderr that names the problem and the
fix, and leaves nothing RUNNING or half-written. Sweeps use the quick profile, whose training
takes minutes here, so the generous time bound below proves "refused before training"; the
store is checked for runs too. Ctrl-C and SIGTERM are real signals to real processes."""

import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from results.ui import free_port


def suite(*args, cwd: Path, user: int | None = None, env: dict | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    extra = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    return subprocess.run([sys.executable, "-m", "suite", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **extra)


def refused(res: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one line on stderr (no traceback) holding every word; returns the line."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("suite: error: "), res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def store_runs(db: Path) -> list:
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def quick_run(tmp_path: Path, *args, **kw) -> subprocess.CompletedProcess:
    """A refused sweep: it never began (no store line, no run, no checkpoint)."""
    res = suite("run", "--profile", "quick", "--no-progress", *args, cwd=tmp_path, **kw)
    assert "store:" not in res.stdout, "refused only after the sweep began"
    assert not any(r.info.status in ("RUNNING", "FINISHED")
                   for r in store_runs(tmp_path / "results" / "mlflow.db"))
    assert not (tmp_path / "results" / "checkpoints").exists() or not any(
        (tmp_path / "results" / "checkpoints").iterdir())
    return res


# ----------------------------------------------------------------------------- suite run

def test_max_eval_length_below_the_ladder(tmp_path):
    res = quick_run(tmp_path, "--attention", "softmax", "--max-eval-length", "32")
    refused(res, "--max-eval-length 32", "flip_flop", "give at least 64")


def test_backend_triton_on_cpu(tmp_path):
    res = quick_run(tmp_path, "--attention", "entmax", "--backend", "triton",
                    "--device", "cpu", env={"TRITON_INTERPRET": "0"})
    refused(res, "--backend triton", "not usable", "--backend auto")


def test_a_stated_commit_that_is_not_one(tmp_path):
    res = quick_run(tmp_path, "--attention", "softmax",
                    env={"SUITE_GIT_COMMIT": "main; rm -rf /"})
    refused(res, "SUITE_GIT_COMMIT", "hex SHA", "+dirty")


def test_flex_backend_on_cpu(tmp_path):
    """FlexAttention is the CUDA path of softmax: forced on the CPU it is refused before any
    work, naming the backends that are usable. (The numba backend runs every built-in kind
    since its top-k kernels, so a kind no backend of the CPU computes exists only for plugins;
    on CUDA, --backend flex refuses the entmax family.)"""
    res = quick_run(tmp_path, "--attention", "softmax", "--attention", "topk:k=8",
                    "--backend", "flex", "--device", "cpu")
    refused(res, "--backend flex", "not usable", "numba, torch")


def test_plugin_with_a_syntax_error(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("import attentions\n\ndef f(q, k, v, *, causal, bias):\n    return (q\n")
    res = quick_run(tmp_path, "--plugin", plugin, "--attention", "softmax")
    refused(res, "broken.py", "SyntaxError", "line 4")


@pytest.mark.parametrize("body, words", [
    ("return (w @ v).transpose(1, 2)", ["(B, T, H, D)", "transpose(1, 2)"]),
    ("return torch.cat([w @ v, w @ v], -1)", ["last dim is 8", "head dim 4"]),
    ("return (w @ v).sum()", ["returned shape ()"]),
    ("raise RuntimeError('boom')", ["RuntimeError: boom", "test input"]),
])
def test_plugin_output_is_checked_before_training(tmp_path, body, words):
    plugin = tmp_path / "bad_layout.py"
    plugin.write_text(textwrap.dedent(f'''
        import torch
        import attentions

        @attentions.register("bad_layout")
        def bad_layout(q, k, v, *, causal, bias):
            w = torch.softmax(q @ k.transpose(-1, -2), -1)
            {body}
    '''))
    res = quick_run(tmp_path, "--plugin", plugin, "--attention", "bad_layout")
    refused(res, "bad_layout", *words)


def readonly_run(directory: Path, cwd: Path, *args) -> tuple[subprocess.CompletedProcess, str]:
    """`suite ARGS` in ``cwd`` with ``directory`` not writable for it, and the reason it
    should give. Not root: a plain chmod does it. Root passes permission checks, so: as
    uid 65534 where the interpreter is readable by it, else in a mount namespace of its own
    where ``directory`` is bound read-only (nothing outside the process sees the mount)."""
    directory.chmod(0o555)
    if os.geteuid() != 0:
        return suite(*args, cwd=cwd), "permission denied"
    try:
        probe = subprocess.run([sys.executable, "-c", "import suite.cli"], user=65534,
                               group=65534, extra_groups=[], capture_output=True, cwd="/")
        if probe.returncode == 0:
            return suite(*args, cwd=cwd, user=65534), "permission denied"
    except OSError:
        pass
    unshare = shutil.which("unshare")
    script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && cd "$1" && shift '
              '&& exec "$@"')
    if unshare is None or subprocess.run([unshare, "--mount", "true"]).returncode != 0:
        pytest.skip("root, and neither uid 65534 nor a mount namespace is available")
    res = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script,
                          str(directory), str(cwd), sys.executable, "-m", "suite", *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    return res, "read-only file system"


@pytest.fixture
def shared_dir():
    """A directory outside root's private pytest folders, readable by every user."""
    path = Path(tempfile.mkdtemp(prefix="suite-perm-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def test_store_directory_without_write_permission(shared_dir):
    store = shared_dir / "store"
    store.mkdir()
    work = shared_dir / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    res, why = readonly_run(store, work, "run", "--profile", "quick", "--attention",
                            "softmax", "--no-progress", "--tracking-uri",
                            f"sqlite:///{store}/mlflow.db")
    assert "store:" not in res.stdout  # refused before the sweep began
    refused(res, str(store), "not writable", why, "--tracking-uri")
    assert list(store.iterdir()) == []


def test_current_directory_without_write_permission(shared_dir):
    work = shared_dir / "readonly"
    work.mkdir()
    res, why = readonly_run(work, work, "run", "--profile", "quick", "--attention", "softmax",
                            "--no-progress")
    refused(res, "results", "not writable", why, "directory you can write to")
    assert list(work.iterdir()) == []
    res, why = readonly_run(work, work, "leaderboard")
    refused(res, "not writable", why)


# ----------------------------------------------------------------------------- other commands

def test_ui_port_out_of_range(tmp_path):
    refused(suite("ui", "--port", "99999", cwd=tmp_path), "--port 99999", "1 to 65535")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args, flag", [(["--lengths", "0"], "--lengths 0"),
                                        (["--lengths", "256", "-4"], "--lengths -4"),
                                        (["--repeats", "0"], "--repeats 0")])
def test_bench_numbers_must_be_positive(tmp_path, args, flag):
    refused(suite("bench", "--no-log", *args, cwd=tmp_path), flag, "positive")


def test_leaderboard_with_a_misspelt_profile(tmp_path):
    refused(suite("leaderboard", "--profile", "smok", cwd=tmp_path), "smok", "smoke")


def test_bench_with_an_unreachable_store_fails_before_measuring(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    res = suite("bench", "--lengths", "8192", "--repeats", "5", "--tracking-uri", dead,
                cwd=tmp_path)
    refused(res, dead, "no answer")
    assert "fwd ms" not in res.stdout  # nothing measured, nothing kept
    assert not list(tmp_path.glob("results/bench-unlogged-*"))


def test_kept_bench_rows_load_with_from_json(tmp_path):
    """What `suite bench` keeps when the store fails is what --from-json reads."""
    from results import speed

    rows = [{"impl": impl, "T": 256, "pass": "fwd", "median_ms": ms, "cpu_ms": 2 * ms,
             "samples": 3, "ratio_to_sdpa": ms / 1.5, "peak_extra_mib": 1.0, "threads": 2,
             "device": "cpu", "load_avg": 1.0}  # the fields of `suite bench`'s CPU rows
            for impl, ms in (("sdpa_softmax", 1.5), ("numba_entmax15", 2.0))]
    os.chdir(tmp_path)
    with pytest.raises(Exception, match="--from-json"):
        speed.log_bench(rows, f"http://127.0.0.1:{free_port()}")
    kept = next(tmp_path.glob("results/bench-unlogged-*.json"))
    store = f"sqlite:///{tmp_path}/good.db"
    res = suite("bench", "--from-json", kept, "--tracking-uri", store, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "logged: bench run" in res.stdout
    from results.tracking import Tracker

    table = speed.records(Tracker(store))
    assert sorted(table["impl"].to_list()) == ["numba_entmax15", "sdpa_softmax"]


# ----------------------------------------------------------------------------- suite import

def offline_log(tmp_path: Path) -> Path:
    """A real offline log of two smoke cells."""
    log = tmp_path / "runs.jsonl"
    res = suite("run", "--profile", "smoke", "--attention", "softmax", "--attention",
                "sparsemax", "--no-progress", "--tracking-uri", f"jsonl:{log}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return log


def test_import_of_a_missing_file(tmp_path):
    refused(suite("import", tmp_path / "nope.jsonl", cwd=tmp_path), "no such file",
            "jsonl:PATH")


def test_import_of_garbage(tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\xffPK\x03\x04 not a log\n{\"a\": 1}\n")
    store = tmp_path / "store.db"
    refused(suite("import", junk, "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path),
            "not an offline run log", "junk.jsonl:1")
    assert store_runs(store) == []


def test_import_of_a_cut_log_takes_every_complete_run(tmp_path):
    log = offline_log(tmp_path)
    lines = log.read_text().splitlines(keepends=True)
    ends = [i for i, line in enumerate(lines) if '"event": "end"' in line]
    assert len(ends) == 2
    cut = tmp_path / "cut.jsonl"  # the first run whole, the second cut inside a line
    middle = (ends[0] + ends[1]) // 2 + 1
    cut.write_text("".join(lines[:middle]) + lines[middle][: len(lines[middle]) // 2])
    store = tmp_path / "store.db"
    res = suite("import", cut, "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    line = refused(res, f"cut.jsonl:{middle + 1}", "not a JSON line", "complete runs")
    assert "1 damaged line" in line
    runs = {r.data.tags["suite.attention"]: r for r in store_runs(store)}
    assert runs["softmax"].info.status == "FINISHED"
    assert runs["softmax"].data.metrics["exact_match_L128"] >= 0  # the whole run came in
    assert runs["sparsemax"].info.status == "FAILED"  # cut off: never FINISHED
    assert "damaged line" in runs["sparsemax"].data.tags["suite.error"]
    assert "imported 2 run(s)" in res.stdout


# ----------------------------------------------------------------------------- signals

def wait_for_line(proc, pattern: str, timeout: float = 180.0) -> str:
    """Read the process's stdout (in a thread) until a line matches; returns what was read."""
    if not hasattr(proc, "lines"):
        proc.lines = queue.Queue()
        threading.Thread(target=lambda: [proc.lines.put(x) for x in proc.stdout],
                         daemon=True).start()
    deadline, out = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            line = proc.lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        out += line
        if re.search(pattern, line):
            return out
    raise AssertionError(f"no {pattern!r} in {out[-2000:]!r}")


def test_ctrl_c_stops_suite_ui_and_its_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "suite", "ui", "--port", str(port),
                             "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out = wait_for_line(proc, r"Ctrl-C stops it")
        server = int(re.search(r"mlflow server pid (\d+)", out).group(1))
        proc.send_signal(signal.SIGINT)
        proc.wait(30)  # generous: the server's own shutdown takes a few seconds
        assert proc.returncode == 0
        assert proc.stderr.read().strip().splitlines() == [
            "suite ui: stopped; the MLflow server is shut down"]
        with pytest.raises(ProcessLookupError):
            os.killpg(server, 0)  # the server's whole process group is gone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                        (signal.SIGINT, True)])
def test_interrupted_run_is_killed_with_one_line(tmp_path, sig, group):
    """SIGINT or SIGTERM to `suite run`; and Ctrl-C as a terminal sends it, to the whole
    process group, with data workers training alongside (as on CUDA) and the command started
    with SIGINT ignored: every way ends in one line, exit 130, the run KILLED."""
    env = {**os.environ, **({"SUITE_DATA_WORKERS": "2"} if group else {})}
    proc = subprocess.Popen([sys.executable, "-m", "suite", "run", "--profile", "quick",
                             "--attention", "softmax", "--seeds", "1", "--tracking-uri",
                             f"sqlite:///{tmp_path}/mlflow.db"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env,
                            preexec_fn=_ignore_sigint if group else None)
    try:
        wait_for_line(proc, r"store: .*\(1 cells\)")
        db = tmp_path / "mlflow.db"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(  # training: its loss is logged
                r.info.status == "RUNNING" and "train_loss" in r.data.metrics
                for r in store_runs(db)):
            time.sleep(0.5)
        time.sleep(1)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.wait(60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    bar = re.compile(r"\d+/\d+ \[")  # the progress bar's lines (tqdm, on stderr)
    lines = [line for line in err.splitlines() if line.strip() and not bar.search(line)]
    assert lines == ["suite: interrupted; the run in progress is marked KILLED, and the same "
                     "command resumes it from its last checkpoint"], err[-3000:]
    (run,) = store_runs(db)
    assert run.info.status == "KILLED"


def test_offline_log_marks_an_interrupted_run_killed(tmp_path):
    from results.offline import JsonlTracker, read

    tracker = JsonlTracker(f"jsonl:{tmp_path}/log.jsonl")
    with pytest.raises(KeyboardInterrupt), tracker.run("copy", "x s0", {}, {}):
        raise KeyboardInterrupt
    assert [r["status"] for r in read(tmp_path / "log.jsonl") if r["event"] == "end"] == [
        "KILLED"]


def test_files_are_written_readable_like_the_store(tmp_path):
    """results/leaderboard.* get the umask's mode (0644 here), not mkstemp's 0600."""
    from results.report import _atomic

    old = os.umask(0o022)
    try:
        path = _atomic(tmp_path / "x.csv", "a,b\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == "a,b\n"
