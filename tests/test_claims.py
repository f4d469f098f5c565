"""Claims and the store's creation under concurrency, with real processes: of processes that
claim one cell at once exactly one wins; a claim of a process killed with SIGKILL (or of a pid
now reused by another process) is taken over; a claim of another host lives by its heartbeat;
processes that open a brand-new embedded store together all find it whole; processes that
append to one offline log at once leave every line whole. Barriers, not sleeps, line the
processes up; every wait is bounded."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from attentions import SpecError
from results import claims as C

from .conftest import ROOT

KEY = "0123abcd0123abcd"


def _claim_once(folder, barrier, out) -> None:
    barrier.wait(timeout=60)
    got = C.Claims(folder).claim(KEY, "race")
    out.put(("won", os.getpid()) if isinstance(got, C.Claim) else ("lost", got.pid))
    barrier.wait(timeout=60)  # every process alive until all have claimed


def test_of_processes_claiming_at_once_exactly_one_wins(tmp_path):
    ctx = mp.get_context("fork")  # the child runs the standard library only
    n = 6
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim_once, args=(tmp_path, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    winners = [pid for what, pid in got if what == "won"]
    assert len(winners) == 1, got
    assert all(pid == winners[0] for what, pid in got if what == "lost")  # they name it


HOLDER = """
import sys, time
from results.claims import Claims
claim = Claims(sys.argv[1]).claim(sys.argv[2], "held by a test child")
print("claimed" if hasattr(claim, "release") else "busy", flush=True)
time.sleep(300)
"""


def test_a_killed_claimants_claim_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), KEY], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "claimed"
        claims = C.Claims(tmp_path)
        held = claims.claim(KEY)
        assert isinstance(held, C.Holder) and held.pid == child.pid
        assert held.what == "held by a test child" and str(child.pid) in str(held)
        assert claims.holder(KEY) == held
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
        assert claims.holder(KEY) is None  # its process is gone
        with claims.claim(KEY, "the next attempt") as mine:
            assert isinstance(mine, C.Claim)
            assert mine.took_over.pid == child.pid
            assert claims.holder(KEY).pid == os.getpid()
        assert claims.holder(KEY) is None and not claims.path(KEY).exists()  # released
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)


def test_a_reused_pid_is_not_its_claimant(tmp_path):
    """A claim naming a live pid whose process started at another time (the pid was reused)
    is dead."""
    me = C.Holder.me("an earlier process with this pid")
    assert me.start is not None  # /proc is readable here
    claims = C.Claims(tmp_path)
    claims._write(KEY, C.Holder(me.host, me.boot, me.pid, str(int(me.start) + 1), 0.0, "old"))
    assert claims.holder(KEY) is None
    claims._write(KEY, me)
    assert claims.holder(KEY) == me  # the same pid and start: alive


def test_a_claim_of_another_host_lives_by_its_heartbeat(tmp_path):
    claims = C.Claims(tmp_path, timeout=600)
    other = C.Holder("another-host", "another-boot", 1, "1", time.time(), "tok")
    claims._write(KEY, other)
    now = claims._fs_now()
    os.utime(claims.path(KEY), (now - 60, now - 60))  # a heartbeat a minute ago
    assert claims.holder(KEY) == other
    assert isinstance(claims.claim(KEY), C.Holder)
    assert C.Claims(tmp_path, timeout=30).holder(KEY) is None  # a shorter timeout: dead
    os.utime(claims.path(KEY), (now - 3600, now - 3600))  # silent for an hour
    assert claims.holder(KEY) is None
    with claims.claim(KEY) as mine:
        assert mine.took_over == other
    with pytest.raises(ValueError, match="claim timeout 0: give a positive number"):
        C.Claims(tmp_path, timeout=0)


def test_the_claim_timeout_setting_reaches_the_store_claims(tmp_path, monkeypatch):
    """SUITE_CLAIM_TIMEOUT (the setting store.claim_timeout) is the timeout of a sweep's
    claims; a bad value is refused with the variable and what it takes."""
    from suite import settings
    from suite.attempts import StoreHome

    home = StoreHome("store-x", tmp_path / "claims", tmp_path / "ckpt")
    monkeypatch.setenv("SUITE_CLAIM_TIMEOUT", "45")
    settings.apply_environment()
    try:
        assert home.claims.timeout == 45.0
        monkeypatch.setenv("SUITE_CLAIM_TIMEOUT", "soon")
        with pytest.raises(SpecError, match="SUITE_CLAIM_TIMEOUT='soon': give a positive number"):
            settings.apply_environment()
    finally:
        monkeypatch.delenv("SUITE_CLAIM_TIMEOUT")
        settings.apply_environment()


def test_release_leaves_a_claim_that_is_not_its_own(tmp_path):
    claims = C.Claims(tmp_path)
    mine = claims.claim(KEY)
    other = C.Holder.me("took it over")
    claims._write(KEY, other)  # e.g. judged dead by another host
    mine.release()
    assert claims._read(KEY) == other


def _open_new_store(uri, barrier, out) -> None:
    from results.tracking import Tracker

    barrier.wait(timeout=120)
    try:
        tracker = Tracker(uri)
        out.put(("ok", tracker.experiment("flip_flop"), tracker.store_id()))
    except Exception as err:  # the test names it
        out.put(("error", f"{type(err).__name__}: {err}", None))


def test_processes_that_open_a_new_store_together_all_find_it_whole(tmp_path):
    """Without the lock, MLflow's schema migration run by several processes at once fails in
    some of them ("table ... already exists", "Online migration expected to match one row")."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    ctx = mp.get_context("spawn")
    n = 3
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_new_store, args=(uri, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(what == "ok" for what, _, _ in got), got
    assert len({exp for _, exp, _ in got}) == 1  # one experiment, made once
    assert len({sid for _, _, sid in got}) == 1  # one store id
    names = [e.name for e in MlflowClient(uri).search_experiments()]
    assert sorted(names) == ["Default", "flip_flop"]
    assert not list((tmp_path / "new").glob(".mlflow.db.*.new"))  # no half-made store left


def _append(path, barrier, n, size) -> None:
    from results.offline import JsonlTracker

    tracker = JsonlTracker(f"jsonl:{path}")
    barrier.wait(timeout=60)
    for i in range(n):
        tracker._write({"event": "dict", "run": f"{os.getpid()}-{i}", "name": "x",
                        "obj": "y" * size})


def test_processes_appending_to_one_offline_log_keep_every_line_whole(tmp_path):
    path = tmp_path / "runs.jsonl"
    ctx = mp.get_context("fork")  # the child runs no torch and no mlflow
    n, lines, size = 4, 20, 100_000  # lines far longer than one buffered write
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_append, args=(path, barrier, lines, size)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == n * lines and all(len(r["obj"]) == size for r in records)
