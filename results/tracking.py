"""MLflow tracking: where runs go, what they carry, and how a cell's run begins and ends.

The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite file
``results/mlflow.db`` (artifacts in ``results/mlartifacts``). One experiment per task; a run
carries the flattened config as params, tags (config hash, versions, git commit and dirty flag,
device) and metrics per length, with the length in the key and also as the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Telemetry off (MLflow reads MLFLOW_DISABLE_TELEMETRY, and DO_NOT_TRACK only when "true").
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_TELEMETRY": "false"}
for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)
if os.environ.get("DO_NOT_TRACK", "").lower() in ("", "1", "yes"):
    os.environ["DO_NOT_TRACK"] = "true"
# A dead server fails in about half a minute, not after MLflow's four minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.entities import RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

for _name in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

from .offline import HASH_TAG  # noqa: E402,F401

DEFAULT_DIR = Path("results")


class TrackingError(RuntimeError):
    """The store cannot be reached or read."""


HINT = ("Start the server or pass a reachable --tracking-uri (or unset MLFLOW_TRACKING_URI to "
        "use the embedded results/mlflow.db).")


@contextlib.contextmanager
def store_errors(uri: str, doing: str = "reach") -> Iterator[None]:
    """Turn any failure of the store (connection, corrupt database, server error) into a
    TrackingError that names the URI."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as err:
        raise TrackingError(f"cannot {doing} the MLflow tracking store at {uri!r}: "
                            f"{_first_line(err)}. {HINT}") from err


def probe_http(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds when an http(s) store does not answer at all (no MLflow retries)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as err:
        raise TrackingError(f"cannot reach the MLflow tracking store at {uri!r}: "
                            f"{type(err).__name__}: no answer within {timeout:g}s. {HINT}"
                            ) from None


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
        probe_http(self.uri)
        with store_errors(self.uri, "open"):
            mlflow.set_tracking_uri(self.uri)
            self.client = MlflowClient(self.uri)
            self.client.search_experiments(max_results=1)

    def experiment(self, name: str) -> str:
        with store_errors(self.uri, "write to"):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            return self.client.create_experiment(name, artifact_location=_art(self.uri, name))

    def finished(self, experiment: str, config_hash: str) -> str | None:
        """The id of a FINISHED run with this config hash, if any."""
        with store_errors(self.uri, "read"):
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                return None
            runs = self.client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`{HASH_TAG}` = '{config_hash}' and "
                              "attributes.status = 'FINISHED'",
                max_results=1,
            )
        return runs[0].info.run_id if runs else None

    def search(self, experiment_ids: list[str], filter_string: str) -> Iterator:
        """Every run that matches, page by page (newest first)."""
        token = None
        while True:
            with store_errors(self.uri, "read"):
                page = self.client.search_runs(experiment_ids, filter_string=filter_string,
                                               max_results=1000, page_token=token,
                                               order_by=["attributes.start_time DESC"])
            yield from page
            token = page.token
            if not token:
                return

    def experiment_ids(self) -> list[str]:
        with store_errors(self.uri, "read"):
            return [e.experiment_id for e in self.client.search_experiments()]

    @contextlib.contextmanager
    def run(self, experiment: str, name: str, params: Mapping[str, Any],
            tags: Mapping[str, str]) -> Iterator[RunLog]:
        """A run that ends FINISHED when the block completes, FAILED (with the error as a tag
        and error.txt) when it raises, KILLED on Ctrl-C; never FINISHED after an error."""
        exp_id = self.experiment(experiment)
        with store_errors(self.uri, "write to"):
            run = self.client.create_run(exp_id, run_name=name, tags=dict(tags))
        log = RunLog(self.client, run.info.run_id)
        try:
            with store_errors(self.uri, "write to"):
                log.params(params)
            yield log
        except BaseException as err:
            self._fail(run.info.run_id, err)
            raise
        with store_errors(self.uri, "write to"):
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def _fail(self, run_id: str, err: BaseException) -> None:
        """Record the error, each step on its own, so that a failing step cannot keep the
        run from ending FAILED (the store may be the thing that failed)."""
        status = RunStatus.FAILED if isinstance(err, Exception) else RunStatus.KILLED
        steps = (lambda: self.client.set_tag(run_id, "suite.error",
                                             f"{type(err).__name__}: {err}"[:4900]),
                 lambda: self.client.log_text(run_id, traceback.format_exc(), "error.txt"),
                 lambda: self.client.set_terminated(run_id, RunStatus.to_string(status)))
        for step in steps:
            with contextlib.suppress(Exception):
                step()


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
