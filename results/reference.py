"""Reference rows: finished runs published with the suite (offline logs under
``results/published/``), ranked beside a user's own cells of the same task and profile, so
that a user trains only their own variant (``suite leaderboard --reference``).

A reference row's label is its attention followed by where it came from, e.g.
``softmax (reference: NVIDIA H200, 1c4cb02, 2026-11-30)``; its seeds column counts its seeds
as any row's does. Only FINISHED cell runs of a log count; the newest per config and seed, as
in the user's own store.
"""

from __future__ import annotations

import datetime as dt
import types
from pathlib import Path

import polars as pl

from . import leaderboard as lb
from . import schema

#: where the suite's reference logs live (shipped with the package)
PUBLISHED = Path(__file__).resolve().parent / "published"
MARK = "reference"


def paths(given: list[str] | None = None) -> list[Path]:
    """The logs to read: the ones given (files, or folders of ``*.jsonl`` and
    ``*.jsonl.gz``), else every such log of ``results/published/``."""
    found: list[Path] = []
    for item in [Path(p) for p in given] if given else [PUBLISHED]:
        if item.is_dir():
            found += sorted([*item.glob("*.jsonl"), *item.glob("*.jsonl.gz")])
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"--reference {item}: no such file or folder (give an "
                                    "offline log written by suite run --tracking-uri "
                                    "jsonl:PATH, or a folder of them)")
    return found


def _run(r: dict) -> types.SimpleNamespace:
    """A log's run in the shape the leaderboard reads from MLflow: tags, params and each
    metric's latest value (the highest step; a later record wins a tie)."""
    tags = {**r["tags"], **r.get("end_tags", {})}
    params = dict(r["params"])
    latest: dict[str, tuple[int, float]] = {}
    for ev in r["events"]:
        if ev["event"] == "metrics":
            for key, value in ev["values"].items():
                if key not in latest or ev["step"] >= latest[key][0]:
                    latest[key] = (ev["step"], value)
        elif ev["event"] == "params":
            params.update(ev["params"])
        elif ev["event"] == "tags":
            tags.update(ev["tags"])
    times = [ev["time"] for ev in r["events"] if "time" in ev] + (
        [r["end_time"]] if r.get("end_time") else [])
    return types.SimpleNamespace(
        info=types.SimpleNamespace(run_id=r["run"], start_time=int(r["time"] * 1000),
                                   end_time=int(max(times, default=r["time"]) * 1000)),
        data=types.SimpleNamespace(tags=tags, params=params,
                                   metrics={k: v for k, (_, v) in latest.items()}))


def load(logs: list[Path]) -> tuple[pl.DataFrame, dict]:
    """The leaderboard's long records (``leaderboard.records``) of the logs' FINISHED cell
    runs, each with its origin (``rows_for`` labels them by it), and the runs by id (for the
    README section's account of how they were made)."""
    from .offline import parse

    rows, by_id = [], {}
    for log in logs:
        runs, _ = parse(log)
        for r in runs.values():
            if r["status"] != "FINISHED" or r["tags"].get(schema.KIND) != schema.CELL:
                continue
            run = by_id[r["run"]] = _run(r)
            rows += [(*row, _origin(r)) for row in lb.run_rows(run)]
    return pl.DataFrame(rows, schema={**lb.SCHEMA, "origin": pl.Utf8}, orient="row"), by_id


def _origin(r: dict) -> str:
    t = schema.fields(r["tags"])
    device = t.get("device", "").split(": ", 1)[-1] or "unknown device"
    day = dt.datetime.fromtimestamp(r["time"], dt.timezone.utc).date().isoformat()
    commit = t.get("git_commit", "unknown")[:7] + ("+dirty" if t.get("git_dirty") == "true"
                                                  else "")
    return f"{MARK}: {device}, {commit}, {day}"


def rows_for(refs: pl.DataFrame, profile: str | None, tasks: list[str] | None
             ) -> pl.DataFrame:
    """The reference records of ``profile`` (and of ``tasks``, where given), one run per
    (task, config, seed), each attention labelled with its origin."""
    if tasks is not None:
        refs = refs.filter(pl.col("task").is_in(tasks))
    if profile is None:
        refs = refs.clear()
    refs, _ = lb.select(refs, profile)  # the profile, the newest run per config and seed
    if refs.is_empty():
        return refs.drop("origin")
    origin = refs.group_by(["task", "attention"]).agg(
        pl.col("origin").unique().sort().str.join("; ").alias("from"))
    return (refs.join(origin, on=["task", "attention"], how="left")
            .with_columns((pl.col("attention") + " (" + pl.col("from") + ")")
                          .alias("attention"))
            .drop("origin", "from"))


def profiles(refs: pl.DataFrame) -> str:
    """What the reference logs hold, e.g. ``repro: mqmtar, sort``."""
    if refs.is_empty():
        return "nothing"
    parts = refs.group_by("profile").agg(pl.col("task").unique().sort())
    return "; ".join(f"{p}: {', '.join(ts)}" for p, ts in parts.sort("profile").iter_rows())
