"""MLflow tracking: where runs go, what they carry, and how a cell's run begins and ends.

The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite file
``results/mlflow.db`` (artifacts in ``results/mlartifacts``). One experiment per task; a run
carries the flattened config as params, tags (config hash, versions, git commit and dirty flag,
device) and metrics per length, with the length in the key and also as the step.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402
from mlflow.entities import RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

DEFAULT_DIR = Path("results")
from .offline import HASH_TAG  # noqa: E402,F401


class TrackingError(RuntimeError):
    """The store cannot be reached or read."""


def default_uri() -> str:
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def resolve_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def artifact_root(uri: str) -> str | None:
    """Artifacts of the embedded store live beside the database."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


class Tracker:
    def __init__(self, uri: str | None = None):
        self.uri = resolve_uri(uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        try:
            self.client.search_experiments(max_results=1)
        except Exception as err:
            raise TrackingError(
                f"cannot reach the MLflow tracking store at {self.uri!r}: {_first_line(err)}. "
                "Start the server or pass a reachable --tracking-uri (or unset "
                "MLFLOW_TRACKING_URI to use the embedded results/mlflow.db)."
            ) from None

    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=_art(self.uri, name))

    def finished(self, experiment: str, config_hash: str) -> str | None:
        """The id of a FINISHED run with this config hash, if any."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = self.client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    @contextlib.contextmanager
    def run(self, experiment: str, name: str, params: Mapping[str, Any],
            tags: Mapping[str, str]) -> Iterator[RunLog]:
        """A run that ends FINISHED when the block completes and FAILED (with the error as
        a tag) when it raises."""
        exp_id = self.experiment(experiment)
        run = self.client.create_run(exp_id, run_name=name, tags=dict(tags))
        log = RunLog(self.client, run.info.run_id)
        try:
            log.params(params)
            yield log
        except BaseException as err:
            msg = f"{type(err).__name__}: {err}"
            with contextlib.suppress(Exception):
                self.client.set_tag(run.info.run_id, "suite.error", msg[:4900])
                self.client.log_text(run.info.run_id, traceback.format_exc(), "error.txt")
                self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


class RunLog:
    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def dict(self, obj: Any, name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)


def _art(uri: str, name: str) -> str | None:
    root = artifact_root(uri)
    return f"{root}/{name}" if root else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
