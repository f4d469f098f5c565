"""What several test files share: the devices, the repository root, relative errors, and an
embedded MLflow store per test (copied from one initialised template, which takes seconds to
make)."""

import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ["DO_NOT_TRACK"] = "true"
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROOT = Path(__file__).resolve().parents[1]  # the checkout


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _settings():
    """Each test reads the suite's settings afresh (on first use, after what the test set in
    the environment; ``settings.apply_environment()`` after a later change), and leaves
    none behind."""
    from suite import settings

    settings.restore(None)
    yield
    settings.restore(None)


def rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-12) -> float:
    """|a - b| / |b| in float64 on the CPU (``floor``: the smallest |b| divided by)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / max(float(b.norm()), floor))


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory) -> Path:
    """An initialised, empty embedded store, the template of ``store``."""
    from results.tracking import Tracker

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    Tracker(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, empty_db) -> str:
    """A fresh embedded store's URI, with the working directory in ``tmp_path`` (where
    ``results/``, checkpoints and leaderboard files go)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    shutil.copy(empty_db, tmp_path / "store/mlflow.db")
    return f"sqlite:///{tmp_path}/store/mlflow.db"


def runs(uri: str, experiment: str = "flip_flop") -> list:
    """Every run of an experiment in a store (none where it has no such experiment)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


class Lines:
    """The output of a process (``guard``: a Popen with text stdout), read by line in a thread
    of its own, so that a test can wait for a line while the process runs."""

    def __init__(self, guard):
        self.guard = guard
        self.lines: queue.Queue = queue.Queue()
        self.text: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.guard.stdout:
            self.text.append(line)
            self.lines.put(line)

    @property
    def out(self) -> str:
        return "".join(self.text)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first line from now on that matches; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.guard.poll() is None, self.out[-3000:]
                continue
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}:\n{self.out[-3000:]}")
