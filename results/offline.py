"""An offline run log for machines without MLflow (a GPU host, a cluster node).

``suite run --tracking-uri jsonl:PATH`` appends every event of every run to one JSON-lines
file instead of a tracking store; ``suite import PATH`` replays it into a real store (the
embedded one by default; ``results.tracking.replay``), keeping params, tags, metrics with their
steps, artifacts and the final status (FINISHED, FAILED, or KILLED on Ctrl-C or when a later
attempt took over the cell of a process that died). A damaged log (a cut last line, garbage
between lines) still gives every complete run (``parse``). Nothing here imports mlflow: the log
holds the same schema (``results.schema``) that a tracking store would.

Several processes may write one log at once: each event is one line appended under a lock on
the file. The log names its store once (``{"event": "store", "id": ...}``, written by the
first process that asks for the id), so that claims and checkpoints belong to it
(``suite.attempts``); a run's status is its last ``end`` event (a run whose process died is
ended KILLED by the attempt that takes its cell over), RUNNING while it has none.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import schema
from .claims import file_lock


class JsonlTracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.path = Path(uri.removeprefix(schema.OFFLINE_PREFIX)).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as err:
            from .errors import TrackingError, reason

            raise TrackingError(f"--tracking-uri {uri}: cannot write {self.path} "
                                f"({reason(err)}); give a path in a directory you can write "
                                "to") from None
        self._id: str | None = None

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, default=float) + "\n").encode()
        with file_lock(self._lock_path()):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line)  # one line, one write, under the lock
            finally:
                os.close(fd)

    def _lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def store_id(self) -> str:
        """The id in the log's ``store`` event, written under the lock by the first process
        that finds none."""
        if self._id is None:
            with file_lock(self._lock_path()):
                self._id = next((r["id"] for r in read(self.path, [])
                                 if r["event"] == "store"), None)
                if self._id is None:
                    self._id = uuid.uuid4().hex[:12]
                    with self.path.open("a") as f:
                        f.write(json.dumps({"event": "store", "id": self._id,
                                            "time": time.time()}) + "\n")
        return self._id

    def local_dir(self) -> Path:
        return self.path.resolve().parent

    def run_states(self) -> dict[str, dict]:
        """Every run: {id: {"experiment", "hash", "status"}}, status from its last end."""
        found: dict[str, dict] = {}
        for rec in read(self.path, []):  # a damaged line is the importer's to report
            if rec["event"] == "start":
                found[rec["run"]] = {"experiment": rec["experiment"], "status": "RUNNING",
                                     "hash": rec["tags"].get(schema.HASH)}
            elif rec["event"] == "end" and rec["run"] in found:
                found[rec["run"]]["status"] = rec["status"]
        return found

    def runs(self, experiment: str, config_hash: str | None = None,
             status: str | None = None) -> list[str]:
        """The ids of the experiment's runs with this config hash and status, newest first."""
        return [run for run, r in reversed(self.run_states().items())
                if r["experiment"] == experiment
                and (config_hash is None or r["hash"] == config_hash)
                and (status is None or r["status"] == status)]

    def finished(self, experiment: str, config_hash: str) -> str | None:
        done = self.runs(experiment, config_hash, "FINISHED")
        return done[-1] if done else None

    def end(self, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
        """End a run (again) with ``status`` and these tags."""
        if status not in schema.STATUSES[1:]:
            raise ValueError(f"end a run FINISHED, FAILED or KILLED, not {status!r}")
        self._write({"event": "end", "run": run_id, "status": status,
                     "tags": {k: str(v) for k, v in (tags or {}).items()},
                     "time": time.time()})

    @contextlib.contextmanager
    def run(self, experiment: str, name: str, params: Mapping[str, Any],
            tags: Mapping[str, str], description: str | None = None
            ) -> Iterator[JsonlRunLog]:
        run = uuid.uuid4().hex
        self._write({"event": "start", "run": run, "experiment": experiment, "name": name,
                     "params": {k: str(v) for k, v in params.items()}, "tags": dict(tags),
                     "description": description, "time": time.time()})
        log = JsonlRunLog(self, run)
        try:
            yield log
        except BaseException as err:
            status = "FAILED" if isinstance(err, Exception) else "KILLED"
            self._write({"event": "end", "run": run, "status": status,
                         "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc(), "time": time.time()})
            raise
        self._write({"event": "end", "run": run, "status": "FINISHED", "time": time.time()})


class JsonlRunLog:
    def __init__(self, tracker: JsonlTracker, run: str):
        self.tracker, self.run = tracker, run

    @property
    def run_id(self) -> str:
        return self.run

    def metrics(self, values: Mapping[str, float], step: int, timestamp: int | None = None
                ) -> None:
        """The values at one step (``timestamp`` in ms, default now)."""
        when = time.time() if timestamp is None else timestamp / 1000
        self.tracker._write({"event": "metrics", "run": self.run, "step": int(step),
                             "values": {k: float(v) for k, v in values.items()},
                             "time": when})

    def dict(self, obj: Any, name: str) -> None:
        self.tracker._write({"event": "dict", "run": self.run, "name": name, "obj": obj})

    def params(self, params: Mapping[str, Any]) -> None:
        self.tracker._write({"event": "params", "run": self.run,
                             "params": {k: str(v) for k, v in params.items()}})

    def tags(self, tags: Mapping[str, str]) -> None:
        self.tracker._write({"event": "tags", "run": self.run, "tags": dict(tags)})

    def table(self, columns: Mapping[str, list], name: str) -> None:
        self.tracker._write({"event": "table", "run": self.run, "name": name,
                             "columns": dict(columns)})

    def dataset(self, name: str, digest: str, source: str, profile: Mapping[str, Any],
                context: str = "train") -> None:
        self.tracker._write({"event": "dataset", "run": self.run, "name": name,
                             "digest": digest, "source": source, "profile": dict(profile),
                             "context": context})


#: the keys each event of the log must carry
EVENT_KEYS = {"start": ("run", "experiment", "name", "params", "tags", "time"),
              "params": ("run", "params"), "metrics": ("run", "step", "values", "time"),
              "tags": ("run", "tags"), "dict": ("run", "name", "obj"),
              "table": ("run", "name", "columns"),
              "dataset": ("run", "name", "digest", "source", "profile"),
              "end": ("run", "status"), "store": ("id",)}


class BadLine(ValueError):
    """A line of an offline log that is cut, not JSON, or not one of its events."""

    def __init__(self, path, n: int, why: str):
        super().__init__(f"{path}:{n}: {why}")
        self.n = n


def _record(line: str, path, n: int) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise BadLine(path, n, f"not a JSON line ({err.msg}; cut or garbage)") from None
    if not isinstance(rec, dict) or rec.get("event") not in EVENT_KEYS:
        raise BadLine(path, n, "not an event of an offline run log")
    missing = [k for k in EVENT_KEYS[rec["event"]] if k not in rec]
    if missing:
        raise BadLine(path, n, f"a {rec['event']!r} event without {', '.join(missing)}")
    return rec


def read(path: Path, bad: list | None = None) -> Iterator[dict]:
    """The events of a log (gzip-compressed where its name ends in ``.gz``: how the long
    reference logs ship). A bad line raises BadLine, or, given a ``bad`` list, is appended
    to it and skipped (so that the complete runs around it can still be read)."""
    path = Path(path)
    opened = (gzip.open(path, "rt", errors="replace") if path.suffix == ".gz"
              else path.open(errors="replace"))
    with opened as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield _record(line, path, n)
                except BadLine as err:
                    if bad is None:
                        raise
                    bad.append(err)


def parse(path: Path) -> tuple[dict[str, dict], list[BadLine]]:
    """The runs of a log by id (start record, ``events``, ``status``, ``error``) and its bad
    lines. A run that was open where a line is damaged gets ``damaged`` (that line); a run the
    log leaves without an end keeps status RUNNING. A log without any run is refused
    (ValueError) before a store is touched."""
    bad: list[BadLine] = []
    runs: dict[str, dict] = {}
    seen_bad, open_runs = 0, set()

    def damage() -> None:  # the runs open around a bad line may miss events
        for run in open_runs:
            runs[run]["damaged"] = str(bad[seen_bad])

    for rec in read(path, bad):
        if len(bad) > seen_bad:
            damage()
            seen_bad = len(bad)
        if rec["event"] == "start":
            open_runs.add(rec["run"])
            runs[rec["run"]] = {**rec, "events": [], "status": "RUNNING", "error": None}
        elif rec.get("run") in runs:
            r = runs[rec["run"]]
            if rec["event"] == "end":  # the last end counts; a later one may add tags
                r["status"], r["error"] = rec["status"], rec.get("error") or r["error"]
                r["end_time"] = rec.get("time", r.get("end_time"))
                r.setdefault("end_tags", {}).update(rec.get("tags", {}))
                open_runs.discard(rec["run"])
            else:
                r["events"].append(rec)
    if len(bad) > seen_bad:
        damage()
    if not runs:
        first = f"; {bad[0]}" if bad else ""
        raise ValueError(f"{path}: no run in it: not an offline run log (written by "
                         f"--tracking-uri jsonl:PATH){first}")
    return runs, bad
