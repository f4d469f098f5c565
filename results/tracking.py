"""MLflow tracking: where runs go, and how a run begins and ends (what runs carry: ``schema``).

The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite file
``results/mlflow.db`` (artifacts in ``results/mlartifacts``). ``Tracker`` is the MLflow side of
the tracker interface described in ``results.store``; ``replay`` loads an offline log into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import traceback
import uuid
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
from .claims import file_lock  # noqa: E402
from .errors import TrackingError, reason  # noqa: E402,F401

DEFAULT_DIR = Path("results")
#: the experiment tag the MLflow UI reads to open an experiment in its model-training view
#: (not the GenAI one), and the tag it shows as an experiment's or a run's description
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"
#: metrics per request (MLflow's log_batch takes at most 1000 entities)
BATCH = 1000


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
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def check_writable(uri: str) -> None:
    """An embedded store's directory (and its database, artifact folder) must be writable:
    a file is created and removed there, so a read-only place fails now and says so, instead
    of after SQLite's retries."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    fix = ("pass a --tracking-uri in a directory you can write to, or run from one "
           "(the default store is results/mlflow.db under the current directory)")
    for directory in (db.parent, db.parent / "mlartifacts"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".suite-write-check-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise TrackingError(f"the store directory {directory} is not writable "
                                f"({reason(err)}); {fix}") from None
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise TrackingError(f"the store {db} is not writable (permission denied); {fix}")


def resolve_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def artifact_root(uri: str) -> str | None:
    """Artifacts of the embedded store live beside the database."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def sqlite_path(uri: str) -> Path | None:
    """The database file of an embedded store, None for any other URI."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def create_once(uri: str) -> None:
    """Make a new embedded store once, whole: under a lock beside it, in a file of its own that
    is renamed into place when MLflow has made its tables. Processes that open a new store
    together then all find it complete (MLflow's schema migration, run by two at once, fails
    in both), and a kill mid-way leaves no half-made store."""
    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    with file_lock(db.parent / f".{db.name}.lock"):
        if db.exists():  # made by another process while this one waited
            return
        tmp = db.with_name(f".{db.name}.{uuid.uuid4().hex[:12]}.new")  # a URI never seen
        try:
            tmp_uri = f"sqlite:///{tmp}"
            MlflowClient(tmp_uri).search_experiments(max_results=1)  # makes the tables
            _dispose(tmp_uri, forget=True)
            _dispose(uri)  # connections this process kept to a store once at this path
            os.replace(tmp, db)
        finally:
            tmp.unlink(missing_ok=True)


def _dispose(db_uri: str, forget: bool = False) -> None:
    """Close MLflow's cached connections to a database (they reopen the path when used)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = SqlAlchemyStore._engine_map
    engine = engines.pop(db_uri, None) if forget else engines.get(db_uri)
    if engine is not None:
        engine.dispose()


class Tracker:
    def __init__(self, uri: str | None = None):
        self.uri = resolve_uri(uri)
        probe_http(self.uri)
        check_writable(self.uri)
        with store_errors(self.uri, "open"):
            create_once(self.uri)
            mlflow.set_tracking_uri(self.uri)
            self.client = MlflowClient(self.uri)
            self.client.search_experiments(max_results=1)

    def store_id(self) -> str:
        """The store's id: a hash of its first experiment's id, creation time and artifact
        location (MLflow's Default experiment, made with the store), so a store made anew at
        the same path has another id, and every client of one store computes the same one
        (nothing is written, so nothing races)."""
        import hashlib

        from mlflow.entities import ViewType

        with store_errors(self.uri, "read"):
            try:
                exp = self.client.get_experiment("0")
            except Exception:  # no Default experiment (deleted for good): the oldest one
                found = self.client.search_experiments(
                    view_type=ViewType.ALL, max_results=1,
                    order_by=["creation_time ASC", "experiment_id ASC"])
                exp = found[0] if found else None
        if exp is None:
            raise TrackingError(f"the store {self.uri!r} holds no experiment to take its id "
                                "from; it is not a store MLflow made")
        text = f"{exp.experiment_id}|{exp.creation_time}|{exp.artifact_location}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def local_dir(self) -> Path | None:
        """The folder of an embedded store's database (None for a tracking server)."""
        db = sqlite_path(self.uri)
        return db.resolve().parent if db is not None else None

    def experiment(self, name: str, description: str | None = None) -> str:
        """The experiment's id, created if new (or found, when another process made it
        meanwhile); tagged for the UI's model-training view and, given one, with its
        description (what its runs and their step axis mean)."""
        with store_errors(self.uri, "write to"):
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                try:
                    exp_id = self.client.create_experiment(
                        name, artifact_location=_art(self.uri, name))
                    tags = {}
                except mlflow.exceptions.MlflowException:  # made by another process meanwhile
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
            if exp is not None:
                exp_id, tags = exp.experiment_id, exp.tags
            wanted = {KIND_TAG: MODEL_TRAINING}
            if description:
                wanted[NOTE_TAG] = description
            for key, value in wanted.items():
                if tags.get(key) != value:  # several processes may tag a new experiment at once
                    _racing(lambda k=key, v=value: self.client.set_experiment_tag(exp_id, k, v))
            return exp_id

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
            tags: Mapping[str, str], description: str | None = None) -> Iterator[RunLog]:
        """A run that ends FINISHED when the block completes, FAILED (with the error as a tag
        and error.txt) when it raises, KILLED on Ctrl-C or SIGTERM (a KeyboardInterrupt or
        SystemExit); never FINISHED after an error. ``description``: the experiment's."""
        log = self.start(experiment, name, tags, params, description=description)
        try:
            yield log
        except BaseException as err:
            self._fail(log.run_id, err)
            raise
        self.end(log.run_id, "FINISHED")

    def start(self, experiment: str, name: str, tags: Mapping[str, str],
              params: Mapping[str, Any] | None = None, start_time: int | None = None,
              description: str | None = None) -> RunLog:
        """A new RUNNING run (``start_time`` in ms, default now) with its tags and params; the
        caller ends it with ``end`` (``run`` does both)."""
        exp_id = self.experiment(experiment, description)
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

    def end(self, run_id: str, status: str, tags: Mapping[str, str] | None = None,
            end_time: int | None = None) -> None:
        """Set the tags, then end the run with ``status`` (FINISHED, FAILED or KILLED; a run
        ended before may be ended again, e.g. a FINISHED duplicate made KILLED); ``end_time``
        in ms (default: now), for a run imported from a log."""
        if status not in schema.STATUSES[1:]:
            raise ValueError(f"end a run FINISHED, FAILED or KILLED, not {status!r}")
        with store_errors(self.uri, "write to"):
            for key, value in (tags or {}).items():
                self.client.set_tag(run_id, key, str(value))
            self.client.set_terminated(run_id, status, end_time=end_time)

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
        now = int(time.time() * 1000) if timestamp is None else int(timestamp)
        self.history([(values, step, now)])

    def history(self, points: list[tuple[Mapping[str, float], int, int]]) -> None:
        """Many steps at once, ``(values, step, timestamp in ms)`` each, in as few requests as
        the store takes (an imported log's training curve: thousands of steps)."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), int(ms), int(step))
                 for values, step, ms in points for k, v in values.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + BATCH])

    def dict(self, obj: Any, name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def table(self, columns: Mapping[str, list], name: str) -> None:
        """A table (column name -> values) that the MLflow UI shows (``log_table``)."""
        self.client.log_table(self.run_id, dict(columns), name)

    def artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def dataset(self, name: str, digest: str, source: str, profile: Mapping[str, Any],
                context: str = "train") -> None:
        """A dataset input of the run (the UI's Dataset column): a generated task has no file,
        so its source is the generator and its digest the spec and data version."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest, source_type="code", source=source,
                     profile=json.dumps(dict(profile), default=str))
        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])]
        # runs of one experiment log the same dataset at once (the cells of a Ray sweep,
        # several sweeps on one store)
        _racing(lambda: self.client.log_inputs(self.run_id, datasets=inputs))


#: tries of a write that lost an insert race (``_racing``)
RACE_TRIES = 5


def _racing(write):
    """``write()``, tried again when it lost a race to another writer. MLflow's SQL store
    writes a dataset input or an experiment tag by looking the row up, then inserting it when
    missing: two processes doing that at once both miss it, and the later insert fails on the
    table's unique key. Its transaction is rolled back, and the next try finds the row the
    other wrote (and updates it, for a tag)."""
    for attempt in range(RACE_TRIES):
        try:
            return write()
        except Exception as err:
            if attempt + 1 == RACE_TRIES or not _duplicate_key(err):
                raise
            time.sleep(0.05 * (attempt + 1))


def _duplicate_key(err: BaseException) -> bool:
    """A store's refusal of a row whose unique key another writer has just inserted (SQLite,
    PostgreSQL and MySQL wordings, through a tracking server or not)."""
    text = str(err)
    return any(s in text for s in ("UNIQUE constraint failed", "IntegrityError",
                                   "duplicate key value", "Duplicate entry"))


def _art(uri: str, name: str) -> str | None:
    root = artifact_root(uri)
    return f"{root}/{name}" if root else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def replay(path: str | Path, tracking_uri: str | None = None,
           source: str | None = "") -> dict[str, Any]:
    """Import an offline log (``results.offline``) into a tracking store; runs already there
    (same config hash, FINISHED) are skipped. A damaged log (a cut last line, garbage in
    between) still gives every run whose events are all readable: lines that are not events
    are skipped and counted, the first named (``first_bad``); a run that was open where a
    line is damaged, or cut off before its end, is imported FAILED with that reason, never
    FINISHED. A file with no run at all is refused (ValueError) before the store is touched.
    ``source``: what the runs' ``imported_from`` tag names (default: the log's path; None: no
    tag, for the logs a parallel sweep's workers hand over). Returns the counts."""
    from .offline import parse

    path = Path(path)
    runs, bad = parse(path)
    counts: dict[str, Any] = {"imported": 0, "skipped": 0, "bad_lines": len(bad),
                              "first_bad": str(bad[0]) if bad else None, "incomplete": 0}
    tracker = Tracker(tracking_uri)
    for r in runs.values():
        if r.get("damaged"):
            counts["incomplete"] += 1
            r["status"], r["error"] = "FAILED", (f"a damaged line while this run was logged "
                                                 f"({r['damaged']})")
        elif r["status"] not in ("FINISHED", "FAILED", "KILLED"):
            counts["incomplete"] += 1  # its machine stopped mid-cell, or the log was cut
            r["status"], r["error"] = "FAILED", (f"the log {path} ends before this run did "
                                                 "(cut off, or the job was killed)")
        h = r["tags"].get(schema.HASH)
        if r["status"] == "FINISHED" and h and tracker.finished(r["experiment"], h):
            counts["skipped"] += 1
            continue
        _import_run(tracker, r, path, source)
        counts["imported"] += 1
    return counts


def _import_run(tracker: Tracker, r: dict, path: Path, source: str | None = "") -> None:
    """One run into the store; it ends with the log's status, or FAILED (KILLED on Ctrl-C)
    if the store fails half-way, never RUNNING."""
    tags = {**r["tags"], **r.get("end_tags", {})}
    if source is not None:
        tags[schema.IMPORTED_FROM] = source or str(path)
    if r["error"]:
        tags[schema.ERROR] = str(r["error"])[:schema.ERROR_LIMIT]
    log = tracker.start(r["experiment"], r["name"], tags, r["params"],
                        start_time=int(r["time"] * 1000), description=r.get("description"))
    points: list[tuple[dict, int, int]] = []  # metrics events not yet written

    def flush() -> None:
        log.history(points)
        points.clear()

    try:
        with store_errors(tracker.uri, "write to"):
            for rec in r["events"]:
                ev = rec["event"]
                if ev == "metrics":
                    points.append((rec["values"], rec["step"], int(rec["time"] * 1000)))
                    continue
                flush()  # the other events keep their place after the metrics before them
                if ev == "dict":
                    log.dict(rec["obj"], rec["name"])
                elif ev == "params":
                    log.params(rec["params"])
                elif ev == "tags":
                    log.tags(rec["tags"])
                elif ev == "table":
                    log.table(rec["columns"], rec["name"])
                elif ev == "dataset":
                    log.dataset(rec["name"], rec["digest"], rec["source"], rec["profile"],
                                rec.get("context", "train"))
            flush()
    except BaseException as err:
        tracker._fail(log.run_id, err)
        raise
    end = r.get("end_time")  # the log's end, not the import's
    tracker.end(log.run_id, r["status"], end_time=int(end * 1000) if end else None)
