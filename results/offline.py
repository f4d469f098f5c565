"""An offline run log for machines without MLflow (a GPU host, a cluster node).

``suite run --tracking-uri jsonl:PATH`` appends every event of every run to one JSON-lines
file instead of a tracking store; ``suite import PATH`` replays it into a real store (the
embedded one by default; ``results.tracking.replay``), keeping params, tags, metrics with their
steps, artifacts and the final status (FINISHED or FAILED). Nothing here imports mlflow: the
log holds the same schema (``results.schema``) that a tracking store would.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import schema


class JsonlTracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.path = Path(uri.removeprefix(schema.OFFLINE_PREFIX)).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def finished(self, experiment: str, config_hash: str) -> str | None:
        starts, done = {}, None
        for rec in read(self.path):
            if rec["event"] == "start" and rec["experiment"] == experiment and \
                    rec["tags"].get(schema.HASH) == config_hash:
                starts[rec["run"]] = True
            if rec["event"] == "end" and rec["status"] == "FINISHED" and rec["run"] in starts:
                done = rec["run"]
        return done

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
            self._write({"event": "end", "run": run, "status": "FAILED",
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

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.tracker._write({"event": "metrics", "run": self.run, "step": int(step),
                             "values": {k: float(v) for k, v in values.items()},
                             "time": time.time()})

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
