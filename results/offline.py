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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as err:
            from .errors import TrackingError, reason

            raise TrackingError(f"--tracking-uri {uri}: cannot write {self.path} "
                                f"({reason(err)}); give a path in a directory you can write "
                                "to") from None

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
              "end": ("run", "status")}


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
    """The events of a log. A bad line raises BadLine, or, given a ``bad`` list, is appended
    to it and skipped (so that the complete runs around it can still be read)."""
    with Path(path).open(errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield _record(line, path, n)
                except BadLine as err:
                    if bad is None:
                        raise
                    bad.append(err)


def replay(path: str | Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Import an offline log into a tracking store; runs already there (same config hash,
    FINISHED) are skipped. A damaged log (a cut last line, garbage in between) still gives
    every run whose events are all readable: lines that are not events are skipped and
    counted, the first named (``first_bad``); a run that was open where a line is damaged,
    or cut off before its end, is imported FAILED with that reason, never FINISHED. A file
    with no event at all is refused (ValueError) before the store is touched. Returns the
    counts."""
    from .tracking import Tracker

    path = Path(path)
    bad: list[BadLine] = []
    runs: dict[str, dict] = {}
    order, seen_bad, open_runs = 0, 0, set()

    def damage() -> None:  # a bad line: the runs open around it may miss events
        for run in open_runs:
            runs[run]["damaged"] = str(bad[seen_bad])

    for rec in read(path, bad):
        if len(bad) > seen_bad:
            damage()
            seen_bad = len(bad)
        if rec["event"] == "start":
            open_runs.add(rec["run"])
            runs[rec["run"]] = {**rec, "metrics": [], "dicts": [], "tables": [],
                                "datasets": [], "status": "RUNNING", "more_params": {},
                                "more_tags": {}, "order": order}
            order += 1
        elif rec["run"] in runs:
            r = runs[rec["run"]]
            ev = rec["event"]
            if ev == "metrics":
                r["metrics"].append(rec)
            elif ev == "params":
                r["more_params"].update(rec["params"])
            elif ev == "tags":
                r["more_tags"].update(rec["tags"])
            elif ev == "dict":
                r["dicts"].append((rec["name"], rec["obj"]))
            elif ev == "table":
                r["tables"].append((rec["name"], rec["columns"]))
            elif ev == "dataset":
                r["datasets"].append(rec)
            elif ev == "end":
                r["status"], r["error"] = rec["status"], rec.get("error")
                open_runs.discard(rec["run"])
    if len(bad) > seen_bad:
        damage()
    if not runs:
        first = f"; {bad[0]}" if bad else ""
        raise ValueError(f"{path}: no run in it: not an offline run log (written by "
                         f"--tracking-uri jsonl:PATH){first}")
    counts: dict[str, Any] = {"imported": 0, "skipped": 0, "bad_lines": len(bad),
                              "first_bad": str(bad[0]) if bad else None, "incomplete": 0}
    tracker = Tracker(tracking_uri)
    for r in runs.values():
        if r.get("damaged"):
            counts["incomplete"] += 1
            r["status"] = "FAILED"
            r["error"] = f"a damaged line while this run was logged ({r['damaged']})"
        elif r["status"] not in ("FINISHED", "FAILED", "KILLED"):
            counts["incomplete"] += 1
            r["status"] = "FAILED"
            r["error"] = (f"the log {path} ends before this run did (cut off, or the job was "
                          "killed): imported FAILED")
        h = r["tags"].get(HASH_TAG)
        if r["status"] == "FINISHED" and h and tracker.finished(r["experiment"], h):
            counts["skipped"] += 1
            continue
        _import_run(tracker, r, path)
        counts["imported"] += 1
    return counts


def _import_run(tracker, r: dict, path: Path) -> None:
    """One run into the store; it ends with the log's status, or FAILED (KILLED on Ctrl-C)
    if the store fails half-way, never RUNNING."""
    from mlflow.entities import Metric, Param, RunStatus

    from .tracking import store_errors

    exp_id = tracker.experiment(r["experiment"], r.get("description"))
    tags = {**r["tags"], **r["more_tags"], "suite.imported_from": str(path)}
    if r.get("error"):
        tags["suite.error"] = str(r["error"])[:4900]
    with store_errors(tracker.uri, "write to"):
        run = tracker.client.create_run(exp_id, run_name=r["name"], tags=tags,
                                        start_time=int(r["time"] * 1000))
    rid = run.info.run_id
    try:
        with store_errors(tracker.uri, "write to"):
            client = tracker.client
            params = [Param(k, str(v)[:6000])
                      for k, v in {**r["params"], **r["more_params"]}.items()]
            for i in range(0, len(params), 100):
                client.log_batch(rid, params=params[i:i + 100])
            metrics = [Metric(k, float(v), int(rec["time"] * 1000), int(rec["step"]))
                       for rec in r["metrics"] for k, v in rec["values"].items()]
            for i in range(0, len(metrics), 500):
                client.log_batch(rid, metrics=metrics[i:i + 500])
            for name, obj in r["dicts"]:
                client.log_dict(rid, obj, name)
            for name, columns in r["tables"]:
                client.log_table(rid, columns, name)
            if r["datasets"]:
                from .tracking import RunLog

                log = RunLog(client, rid)
                for d in r["datasets"]:
                    log.dataset(d["name"], d["digest"], d["source"], d["profile"],
                                d.get("context", "train"))
    except BaseException as err:
        status = RunStatus.FAILED if isinstance(err, Exception) else RunStatus.KILLED
        with contextlib.suppress(Exception):
            tracker.client.set_tag(rid, "suite.error", f"import stopped: {err}"[:4900])
        with contextlib.suppress(Exception):
            tracker.client.set_terminated(rid, RunStatus.to_string(status))
        raise
    with store_errors(tracker.uri, "write to"):
        tracker.client.set_terminated(rid, r["status"])
