"""An offline run log for machines without MLflow (a GPU host, a cluster node).

``suite run --tracking-uri jsonl:PATH`` appends every event of every run to one JSON-lines
file instead of a tracking store; ``suite import PATH`` replays it into a real store (the
embedded one by default), keeping params, tags, metrics with their steps, artifacts and the
final status (FINISHED or FAILED). Nothing here imports mlflow.
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

PREFIX = "jsonl:"
HASH_TAG = "suite.config_hash"


def is_offline(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(PREFIX)


class JsonlTracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.path = Path(uri.removeprefix(PREFIX)).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def finished(self, experiment: str, config_hash: str) -> str | None:
        starts, done = {}, None
        for rec in read(self.path):
            if rec["event"] == "start" and rec["experiment"] == experiment and \
                    rec["tags"].get(HASH_TAG) == config_hash:
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

    def params(self, params: Mapping[str, Any]) -> None:
        self.tracker._write({"event": "params", "run": self.run,
                             "params": {k: str(v) for k, v in params.items()}})

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.tracker._write({"event": "metrics", "run": self.run, "step": int(step),
                             "values": {k: float(v) for k, v in values.items()},
                             "time": time.time()})

    def tags(self, tags: Mapping[str, str]) -> None:
        self.tracker._write({"event": "tags", "run": self.run, "tags": dict(tags)})

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


def replay(path: str | Path, tracking_uri: str | None = None) -> dict[str, int]:
    """Import an offline log into a tracking store; runs already there (same config hash,
    FINISHED) are skipped. Returns counts of imported and skipped runs."""
    from mlflow.entities import Metric, Param, RunStatus

    from .tracking import Tracker

    tracker = Tracker(tracking_uri)
    runs: dict[str, dict] = {}
    for rec in read(Path(path)):
        if rec["event"] == "start":
            runs[rec["run"]] = {**rec, "metrics": [], "dicts": [], "status": "RUNNING",
                                "more_params": {}, "more_tags": {}}
        elif rec["run"] in runs:
            r = runs[rec["run"]]
            if rec["event"] == "metrics":
                ms = int(rec["time"] * 1000)
                r["metrics"] += [Metric(k, v, ms, rec["step"]) for k, v in rec["values"].items()]
            elif rec["event"] == "params":
                r["more_params"].update(rec["params"])
            elif rec["event"] == "tags":
                r["more_tags"].update(rec["tags"])
            elif rec["event"] == "dict":
                r["dicts"].append((rec["name"], rec["obj"]))
            elif rec["event"] == "end":
                r["status"], r["error"] = rec["status"], rec.get("error")
    counts = {"imported": 0, "skipped": 0}
    for r in runs.values():
        h = r["tags"].get(HASH_TAG)
        if r["status"] == "FINISHED" and h and tracker.finished(r["experiment"], h):
            counts["skipped"] += 1
            continue
        exp_id = tracker.experiment(r["experiment"])
        tags = {**r["tags"], **r["more_tags"], "suite.imported_from": str(path)}
        if r.get("error"):
            tags["suite.error"] = r["error"][:4900]
        run = tracker.client.create_run(exp_id, run_name=r["name"], tags=tags,
                                        start_time=int(r["time"] * 1000))
        rid = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in {**r["params"], **r["more_params"]}.items()]
        for i in range(0, len(params), 100):
            tracker.client.log_batch(rid, params=params[i:i + 100])
        for i in range(0, len(r["metrics"]), 500):
            tracker.client.log_batch(rid, metrics=r["metrics"][i:i + 500])
        for name, obj in r["dicts"]:
            tracker.client.log_dict(rid, obj, name)
        status = r["status"] if r["status"] in ("FINISHED", "FAILED") else "FAILED"
        tracker.client.set_terminated(rid, RunStatus.to_string(getattr(RunStatus, status)))
        counts["imported"] += 1
    return counts
