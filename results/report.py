"""`suite leaderboard` end to end: read the store, render, write ``results/leaderboard.*``, and
log the same files to a leaderboard run of its own (experiment ``leaderboard``, tag
``suite.kind=leaderboard``), the tables also through ``log_table`` and the markdown as the
run's description, so that the MLflow UI shows them.

Order matters for "lose nothing": the store is read first (a bad store fails before any file
is touched), files are replaced atomically, and only then is the run logged; if logging fails
the files stay and the error says so.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import tempfile
from pathlib import Path

import polars as pl

from . import leaderboard as lb
from . import schema
from . import speed as sp

EXPERIMENT = schema.LEADERBOARD_EXPERIMENT
KIND_FILTER = schema.where(kind=schema.LEADERBOARD, status="FINISHED")
NOTE_LIMIT = 7900  # MLflow tag values hold 8000 characters


@dataclasses.dataclass
class Report:
    uri: str
    profile: str | None
    table: pl.DataFrame
    speed: pl.DataFrame
    text: str
    files: list[Path]
    run_id: str | None = None
    experiment_id: str | None = None


def make(tracking_uri: str | None = None, profile: str | None = None,
         out_dir: Path = Path("results"), log: bool = True) -> Report:
    from .tracking import Tracker

    tracker = Tracker(tracking_uri)
    recs, profile = lb.select(lb.records(tracker), profile)
    tab, speed = lb.table(recs), sp.records(tracker)
    text = lb.render(tab, speed)
    rep = Report(tracker.uri, profile, tab, speed, text, [])
    if tab.is_empty() and speed.is_empty():
        return rep
    rep.files = write(tab, speed, lb.about(recs, profile), Path(out_dir))
    if log:
        rep.experiment_id, rep.run_id = publish(tracker, rep)
    return rep


def write(tab: pl.DataFrame, speed: pl.DataFrame, about: str, out_dir: Path) -> list[Path]:
    """results/leaderboard.{csv,md,png,html}, each replaced atomically."""
    from .plots import plot

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_atomic(out_dir / "leaderboard.csv", lb.csv_text(tab)),
             _atomic(out_dir / "leaderboard.md", lb.markdown(tab, speed, about))]
    png = None
    if not tab.is_empty():
        png = _atomic(out_dir / "leaderboard.png", lambda p: plot(tab, p))
        paths.append(png)
    b64 = base64.b64encode(png.read_bytes()).decode() if png else None
    paths.append(_atomic(out_dir / "leaderboard.html", lb.html(tab, speed, about, b64)))
    return paths


def _atomic(path: Path, content) -> Path:
    """Write a string (or call ``content(tmp_path)``) beside ``path``, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        if callable(content):
            content(Path(tmp))
        else:
            Path(tmp).write_text(content)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def publish(tracker, rep: Report) -> tuple[str, str]:
    """Log the leaderboard run; returns (experiment id, run id)."""
    from .gitinfo import git_state
    from .tracking import TrackingError, store_errors

    md = next((p.read_text() for p in rep.files if p.suffix == ".md"), "")
    note = md if len(md) <= NOTE_LIMIT else md[:NOTE_LIMIT] + "\n\n(cut: see leaderboard.md)"
    tags = {schema.KIND: schema.LEADERBOARD, schema.tag("profile"): rep.profile or "",
            "mlflow.note.content": note, **{schema.tag(k): v for k, v in git_state().items()}}
    params = {"profile": rep.profile or "", "rows": rep.table.height,
              "tasks": ",".join(rep.table["task"].unique(maintain_order=True))}
    try:
        with tracker.run(EXPERIMENT, f"leaderboard | {rep.profile}", params, tags) as log, \
                store_errors(tracker.uri, "write to"):
            for path in rep.files:
                log.artifact(path)
            log.text(rep.text + "\n", "leaderboard.txt")
            log.table(_columns(rep.table), "leaderboard_table.json")
            if not rep.speed.is_empty():
                log.table(_columns(rep.speed), "speed_table.json")
            run_id = log.run_id
    except TrackingError as err:
        raise TrackingError(f"{err} The files {', '.join(map(str, rep.files))} are written; "
                            "only the leaderboard run is missing.") from err
    return tracker.experiment(EXPERIMENT), run_id


def _columns(df: pl.DataFrame) -> dict[str, list]:
    return df.to_dict(as_series=False)


def latest(tracker) -> tuple[str, str] | None:
    """(experiment id, run id) of the newest finished leaderboard run, if any."""
    exp_id = tracker.existing(EXPERIMENT)
    if exp_id is None:
        return None
    run = next(iter(tracker.search([exp_id], KIND_FILTER)), None)
    return (exp_id, run.info.run_id) if run else None
