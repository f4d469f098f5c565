"""`suite ui`: the MLflow UI on 127.0.0.1 over the suite's store, with light settings (one
worker, the server's job execution off, telemetry off). Over a database store it starts
``mlflow server`` (artifacts beside an SQLite file, as the embedded store keeps them); over an
http(s) store the server already is the UI, so only the URL is printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .tracking import TELEMETRY_OFF, TrackingError

HOST = "127.0.0.1"
SERVER_ENV = {**TELEMETRY_OFF, "DO_NOT_TRACK": "true",
              "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
              "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false"}


VIEW = "?workflowType=machine_learning"  # the UI's model-training view, not its GenAI one


def run_url(base: str, found: tuple[str, str] | None, artifact: str | None = "leaderboard.md"
            ) -> str:
    """The UI address of a leaderboard run, showing one of its artifacts (or of the
    experiment list when there is no such run)."""
    base = base.rstrip("/")
    if found is None:
        return f"{base}/#/experiments{VIEW}"
    exp_id, run_id = found
    page = f"/artifacts/{artifact}" if artifact else ""
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}{page}{VIEW}"


BY_SCORE = "orderByKey=metrics.%60score%60&orderByAsc=false"  # best first, as ranked


def experiment_url(base: str, exp_id: str, chart: bool = False) -> str:
    """An experiment's runs, best score first, as a table or (``chart``) as the chart view,
    where each metric logged per length is drawn against length."""
    mode = "/runs?compareRunsMode=CHART&" if chart else "?"
    return f"{base.rstrip('/')}/#/experiments/{exp_id}{mode}{BY_SCORE}&{VIEW.lstrip('?')}"


def task_experiments(tracker) -> list[tuple[str, str]]:
    """(name, id) of every experiment that holds cell runs, by name."""
    from .tracking import store_errors

    with store_errors(tracker.uri, "read"):
        exps = tracker.client.search_experiments()
    out = []
    for exp in exps:
        with store_errors(tracker.uri, "read"):
            hit = tracker.client.search_runs([exp.experiment_id],
                                             "tags.`suite.kind` = 'cell'", max_results=1)
        if hit:
            out.append((exp.name, exp.experiment_id))
    return sorted(out)


def model_training_view(tracker) -> None:
    """Tag the store's experiments for the UI's model-training view where they carry no kind
    yet (stores written before the suite tagged its experiments)."""
    from .tracking import KIND_TAG, MODEL_TRAINING, store_errors

    with store_errors(tracker.uri, "write to"):
        for exp in tracker.client.search_experiments():
            if not exp.tags.get(KIND_TAG):
                tracker.client.set_experiment_tag(exp.experiment_id, KIND_TAG, MODEL_TRAINING)


APP = "suite-ui"  # results/ui_app.py: MLflow's app, opening in the model-training view


def _app_installed() -> bool:
    import importlib.metadata

    return any(ep.name == APP for ep in importlib.metadata.entry_points(group="mlflow.app"))


def server_command(uri: str, port: int, workers: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", HOST, "--port", str(port), "--workers", str(workers)]
    if _app_installed():
        cmd += ["--app-name", APP]
    if uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        cmd += ["--artifacts-destination", str(root.resolve())]
    return cmd


def log_path(uri: str) -> Path:
    """Where the server's own output goes: beside an embedded store, else results/."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlflow-ui.log"
    return Path("results") / "mlflow-ui.log"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(uri: str, port: int, log=None) -> subprocess.Popen:
    """``mlflow server`` in a session of its own (so that stopping it stops its workers); its
    output goes to ``log`` (default: this process's stdout and stderr)."""
    if not port_free(port):
        raise TrackingError(f"port {port} on {HOST} is in use; pass another --port")
    return subprocess.Popen(server_command(uri, port), env={**os.environ, **SERVER_ENV},
                            stdout=log, stderr=subprocess.STDOUT if log else None,
                            start_new_session=True)


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 90.0) -> None:
    """Until ``/health`` answers; a server that exits or stays silent is an error."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(f"mlflow server for {base} exited with code {proc.returncode}")
        try:
            if requests.get(f"{base}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TrackingError(f"mlflow server at {base} did not answer within {timeout:g}s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM to the server's process group (its workers included), SIGKILL to whatever
    of the group is left after ``timeout`` seconds."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(proc.pid):
        proc.poll()  # reap the leader
        time.sleep(0.2)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait(5)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
