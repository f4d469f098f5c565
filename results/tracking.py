"""MLflow tracking: where runs go, and how a run begins and ends (what runs carry: ``schema``).

The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite file
``results/mlflow.db`` (artifacts in ``results/mlartifacts``). ``Tracker`` is the MLflow side of
the tracker interface described in ``results.store``; ``replay`` loads an offline log into it.
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

from . import schema  # noqa: E402

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
    if not schema.is_http(uri):
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

    def existing(self, experiment: str) -> str | None:
        """The id of an experiment, or None where the store has none of that name."""
        with store_errors(self.uri, "read"):
            exp = self.client.get_experiment_by_name(experiment)
        return exp.experiment_id if exp is not None else None

    def finished(self, experiment: str, config_hash: str) -> str | None:
        """The id of a FINISHED run with this config hash, if any."""
        exp_id = self.existing(experiment)
        if exp_id is None:
            return None
        with store_errors(self.uri, "read"):
            runs = self.client.search_runs(
                [exp_id], filter_string=schema.where(config_hash=config_hash, status="FINISHED"),
                max_results=1)
        return runs[0].info.run_id if runs else None

    def runs(self, experiment: str, **conditions) -> list[str]:
        """The ids of the experiment's runs that match ``schema.where(**conditions)``, newest
        first."""
        exp_id = self.existing(experiment)
        if exp_id is None:
            return []
        return [run.info.run_id for run in self.search([exp_id], schema.where(**conditions))]

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

    def artifact_text(self, run_id: str, name: str) -> str:
        """The text of one of a run's artifacts."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp, store_errors(self.uri, "read"):
            return Path(self.client.download_artifacts(run_id, name, tmp)).read_text()

    def experiment_ids(self) -> list[str]:
        with store_errors(self.uri, "read"):
            return [e.experiment_id for e in self.client.search_experiments()]

    @contextlib.contextmanager
    def run(self, experiment: str, name: str, params: Mapping[str, Any],
            tags: Mapping[str, str]) -> Iterator[RunLog]:
        """A run that ends FINISHED when the block completes, FAILED (with the error as a tag
        and error.txt) when it raises, KILLED on Ctrl-C; never FINISHED after an error."""
        log = self.start(experiment, name, tags, params)
        try:
            yield log
        except BaseException as err:
            self._fail(log.run_id, err)
            raise
        self.end(log.run_id, "FINISHED")

    def start(self, experiment: str, name: str, tags: Mapping[str, str],
              params: Mapping[str, Any] | None = None, start_time: int | None = None) -> RunLog:
        """A new RUNNING run (``start_time`` in ms, default now) with its tags and params; the
        caller ends it with ``end`` (``run`` does both)."""
        exp_id = self.experiment(experiment)
        with store_errors(self.uri, "write to"):
            run = self.client.create_run(exp_id, run_name=name, tags=dict(tags),
                                         start_time=start_time)
        log = RunLog(self.client, run.info.run_id)
        try:
            with store_errors(self.uri, "write to"):
                log.params(params or {})
        except BaseException as err:
            self._fail(log.run_id, err)
            raise
        return log

    def end(self, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
        """Set the tags, then end the run with ``status`` (FINISHED, FAILED or KILLED; a run
        ended before may be ended again, e.g. a FINISHED duplicate made KILLED)."""
        if status not in schema.STATUSES[1:]:
            raise ValueError(f"end a run FINISHED, FAILED or KILLED, not {status!r}")
        with store_errors(self.uri, "write to"):
            for key, value in (tags or {}).items():
                self.client.set_tag(run_id, key, str(value))
            self.client.set_terminated(run_id, status)

    def _fail(self, run_id: str, err: BaseException) -> None:
        """Record the error, each step on its own, so that a failing step cannot keep the
        run from ending FAILED (the store may be the thing that failed)."""
        status = RunStatus.FAILED if isinstance(err, Exception) else RunStatus.KILLED
        steps = (lambda: self.client.set_tag(run_id, schema.ERROR, f"{type(err).__name__}: "
                                             f"{err}"[:schema.ERROR_LIMIT]),
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

    def metrics(self, values: Mapping[str, float], step: int, timestamp: int | None = None
                ) -> None:
        """The values at one step (``timestamp`` in ms, default now)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000) if timestamp is None else int(timestamp)
        items = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def dict(self, obj: Any, name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def table(self, columns: Mapping[str, list], name: str) -> None:
        """A table (column name -> values) that the MLflow UI shows (``log_table``)."""
        self.client.log_table(self.run_id, dict(columns), name)

    def artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))


def _art(uri: str, name: str) -> str | None:
    root = artifact_root(uri)
    return f"{root}/{name}" if root else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def replay(path: str | Path, tracking_uri: str | None = None,
           source: str | None = "") -> dict[str, int]:
    """Import an offline log (``results.offline``) into a tracking store; runs already there
    (same config hash, FINISHED) are skipped. Returns counts of imported and skipped runs.
    ``source``: what the runs' ``imported_from`` tag names (default: the log's path; None: no
    tag, for the logs a parallel sweep's workers hand over)."""
    from .offline import read

    tracker = Tracker(tracking_uri)
    runs: dict[str, dict] = {}
    for rec in read(Path(path)):
        if rec["event"] == "start":
            runs[rec["run"]] = {**rec, "events": [], "status": "RUNNING", "error": None}
        elif rec["run"] in runs:
            r = runs[rec["run"]]
            if rec["event"] == "end":
                r["status"], r["error"] = rec["status"], rec.get("error")
            else:
                r["events"].append(rec)
    counts = {"imported": 0, "skipped": 0}
    for r in runs.values():
        h = r["tags"].get(schema.HASH)
        if r["status"] == "FINISHED" and h and tracker.finished(r["experiment"], h):
            counts["skipped"] += 1
            continue
        tags = dict(r["tags"])
        if source is not None:
            tags[schema.IMPORTED_FROM] = source or str(path)
        if r["error"]:
            tags[schema.ERROR] = r["error"][:schema.ERROR_LIMIT]
        log = tracker.start(r["experiment"], r["name"], tags, r["params"],
                            start_time=int(r["time"] * 1000))
        with store_errors(tracker.uri, "write to"):
            for rec in r["events"]:
                if rec["event"] == "metrics":
                    log.metrics(rec["values"], rec["step"], timestamp=int(rec["time"] * 1000))
                elif rec["event"] == "dict":
                    log.dict(rec["obj"], rec["name"])
        # a run the log left RUNNING (its machine stopped mid-cell) is imported FAILED
        tracker.end(log.run_id, r["status"] if r["status"] in ("FINISHED", "FAILED")
                    else "FAILED")
        counts["imported"] += 1
    return counts
