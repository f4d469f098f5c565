"""An offline run log for machines without MLflow (a GPU host, a cluster node).

``suite run --tracking-uri jsonl:PATH`` appends every event of every run to one JSON-lines
file instead of a tracking store; ``suite import PATH`` replays it into a real store (the
embedded one by default; ``results.tracking.replay``), keeping params, tags, metrics with their
steps, artifacts and the final status (FINISHED, FAILED or KILLED). Nothing here imports
mlflow: the log holds the same schema (``results.schema``) that a tracking store would.

Several processes may write one log at once: each event is one line appended under a lock on
the file. The log names its store once (``{"event": "store", "id": ...}``, written by the
first process that asks for the id), so that claims and checkpoints belong to it
(``suite.attempts``); a run's status is its last ``end`` event (a run whose process died is
ended KILLED by the attempt that takes its cell over), RUNNING while it has none.
"""

from __future__ import annotations

import contextlib
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
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
                self._id = next((r["id"] for r in read(self.path) if r["event"] == "store"),
                                None)
                if self._id is None:
                    self._id = uuid.uuid4().hex[:12]
                    with self.path.open("a") as f:
                        f.write(json.dumps({"event": "store", "id": self._id,
                                            "time": time.time()}) + "\n")
        return self._id

    def local_dir(self) -> Path:
        return self.path.resolve().parent

    def _runs(self) -> dict[str, dict]:
        """Every run: {id: {"experiment", "hash", "status"}}, status from its last end."""
        found: dict[str, dict] = {}
        for rec in read(self.path):
            if rec["event"] == "start":
                found[rec["run"]] = {"experiment": rec["experiment"], "status": "RUNNING",
                                     "hash": rec["tags"].get(schema.HASH)}
            elif rec["event"] == "end" and rec["run"] in found:
                found[rec["run"]]["status"] = rec["status"]
        return found

    def runs(self, experiment: str, config_hash: str | None = None,
             status: str | None = None) -> list[str]:
        """The ids of the experiment's runs with this config hash and status, newest first."""
        return [run for run, r in reversed(self._runs().items())
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
            tags: Mapping[str, str]) -> Iterator[JsonlRunLog]:
        run = uuid.uuid4().hex
        self._write({"event": "start", "run": run, "experiment": experiment, "name": name,
                     "params": {k: str(v) for k, v in params.items()}, "tags": dict(tags),
                     "time": time.time()})
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


def read(path: Path) -> Iterator[dict]:
    with Path(path).open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not a JSON line ({err})") from None
