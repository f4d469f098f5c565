"""`suite leaderboard` end to end: read the store, render, write ``results/leaderboard.*``, and
log the same files to a leaderboard run of its own (experiment ``leaderboard``, tag
``suite.kind=leaderboard``), the tables also through ``log_table`` and the markdown as the
run's description, so that the MLflow UI shows them, with one metric per (task, attention):
the score its rows are ranked by; below each task's table, its attention diagnostics against
length (normalized entropy, support size, max weight, target mass, learned scale: the mean over
seeds, ``leaderboard.diagnostics``), where the runs logged them. The newest run is the current
one (``suite.current``); older ones are kept, renamed ``superseded | ...``.

Order matters for "lose nothing": the store is read first (a bad store fails before any file
is touched), files are replaced atomically, and only then is the run logged; if logging fails
the files stay and the error says so.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
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
    records: pl.DataFrame | None = None  # the ranked runs' records, references included
    reference_runs: dict | None = None  # the reference runs by id (``results.reference``)
    diagnostics: pl.DataFrame | None = None  # ``leaderboard.diagnostics`` of the records


def make(tracking_uri: str | None = None, profile: str | None = None,
         out_dir: Path = Path("results"), log: bool = True,
         reference: list[str] | None = None, git: dict[str, str] | None = None) -> Report:
    """``reference``: None for the store's runs alone; else offline logs (``[]``: the ones the
    suite ships, ``results.reference``) whose runs of the same profile and tasks are ranked
    beside the store's, labelled as references. ``git``: the code state the leaderboard run is
    tagged with (default: git's state of this checkout)."""
    from .tracking import Tracker

    tracker = Tracker(tracking_uri)
    every = lb.records(tracker)
    refs, ref_runs = None, {}
    if reference is not None:
        from . import reference as ref

        refs, ref_runs = ref.load(ref.paths(reference))
        if every.is_empty() and profile is None and not refs.is_empty():
            profile = refs.sort("start")["profile"][-1]  # nothing of one's own: the newest
    recs, profile = lb.select(every, profile)
    note = ""
    if refs is not None:
        tasks = None if recs.is_empty() else recs["task"].unique().to_list()
        extra = ref.rows_for(refs, profile, tasks)
        if extra.is_empty():
            note = (f"\n(no reference runs of profile {profile!r}"
                    + (f" for {', '.join(sorted(tasks))}" if tasks else "")
                    + f"; the reference logs hold {ref.profiles(refs)})")
        recs = pl.concat([recs, extra.select(recs.columns)]) if not recs.is_empty() else extra
    tab, speed, diag = lb.table(recs), sp.records(tracker), lb.diagnostics(recs)
    text = lb.render(tab, speed) + note
    if tab.is_empty() and not every.is_empty():
        held = ", ".join(sorted(every["profile"].unique().to_list()))
        text = (f"the store holds no finished runs of profile {profile!r} (it holds runs of: "
                f"{held}); pass --profile with one of those")
    rep = Report(tracker.uri, profile, tab, speed, text, [], records=recs,
                 reference_runs=ref_runs, diagnostics=diag)
    if tab.is_empty() and speed.is_empty():
        return rep
    rep.files = write(tab, speed, lb.about(recs, profile), Path(out_dir),
                      title=plot_title(recs, profile), diag=diag)
    if log:
        rep.experiment_id, rep.run_id = publish(tracker, rep, git)
    return rep


def plot_title(recs: pl.DataFrame, profile: str | None) -> str:
    """What the figure shows and of what: the profile and the seeds per cell."""
    if recs.is_empty():
        return f"profile {profile}"
    seeds = recs.unique("run_id").group_by(["task", "attention"]).agg(pl.len())["len"]
    lo, hi = seeds.min(), seeds.max()
    n = str(lo) if lo == hi else f"{lo}-{hi}"
    return (f"Attention leaderboard, profile {profile}\nmean over {n} seed(s) per cell; "
            "band and bars: ±1 std over seeds")


def write(tab: pl.DataFrame, speed: pl.DataFrame, about: str, out_dir: Path,
          title: str | None = None, diag: pl.DataFrame | None = None) -> list[Path]:
    """results/leaderboard.{csv,md,png,html}, each replaced atomically; ``diag``: the attention
    diagnostics the markdown and the page show below each task's table."""
    from .plots import plot

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_atomic(out_dir / "leaderboard.csv", lb.csv_text(tab)),
             _atomic(out_dir / "leaderboard.md", lb.markdown(tab, speed, about, diag))]
    png = None
    if not tab.is_empty():
        png = _atomic(out_dir / "leaderboard.png", lambda p: plot(tab, p, title))
        paths.append(png)
    b64 = base64.b64encode(png.read_bytes()).decode() if png else None
    paths.append(_atomic(out_dir / "leaderboard.html", lb.html(tab, speed, about, b64, diag)))
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
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary write would (mkstemp gives 0600)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


DESCRIPTION = (
    "The leaderboard: one run per `suite leaderboard` (and per `suite run`, which ends with "
    "one). The current one is tagged `suite.current = true`; older ones are kept, renamed "
    "`superseded | ...` and tagged `suite.current = false`. Each holds the ranked tables "
    "(leaderboard.md, .html, .csv, .txt, and leaderboard_table.json as a table), each task's "
    "attention diagnostics against length (in leaderboard.md and .html, and "
    "diagnostics_table.json where the runs logged them), the figure (leaderboard.png), and "
    "one metric per (task, attention): `score/<task>/<attention>`, the number the task's rows "
    "are ranked by.")


CUT = "(cut here to fit the run's note; the whole report is the artifact leaderboard.md)"


def _diagnostics_head(para: str) -> bool:
    """The first paragraph of a task's diagnostics: the report's ``### <task>: attention
    diagnostics`` heading, or the README section's sentence."""
    return (para.startswith("### ") and para.endswith(": attention diagnostics")) or (
        para.startswith("Attention diagnostics against length"))


def note_of(md: str, limit: int = NOTE_LIMIT) -> str:
    """The leaderboard run's note (an MLflow tag, so at most ``limit`` characters): the whole
    report when it fits; else the report with each task's diagnostics tables replaced by a line
    that says where they are; else that, cut after the last paragraph that fits. Never a table
    cut in half."""
    if len(md) <= limit:
        return md
    kept, skipping = [], False
    for para in md.split("\n\n"):
        if _diagnostics_head(para):
            skipping = True
            kept.append(para.split("\n")[0] if para.startswith("#") else para.split(":")[0])
            kept.append("(the diagnostics tables: in the artifact leaderboard.md)")
        elif skipping and not para.startswith(("#", "**")):
            continue  # a diagnostics table, its title or its caption
        else:
            skipping = False
            kept.append(para)
    text = "\n\n".join(kept)
    if len(text) <= limit:
        return text
    out = ""
    for para in kept:
        if len(out) + len(para) + 2 * len("\n\n") + len(CUT) > limit:
            break
        out += para + "\n\n"
    return out + CUT


def metric_name(task: str, attention: str) -> str:
    """``score/<task>/<attention>`` in the characters MLflow allows in a metric key."""
    return re.sub(r"[^0-9A-Za-z_./ -]", "_", f"score/{task}/{attention}")


def publish(tracker, rep: Report, git: dict[str, str] | None = None) -> tuple[str, str]:
    """Log the leaderboard run, tagged with ``git`` (default: git's state of this checkout);
    returns (experiment id, run id)."""
    from .gitinfo import git_state
    from .tracking import TrackingError, store_errors

    md = next((p.read_text() for p in rep.files if p.suffix == ".md"), "")
    note = note_of(md)
    tags = {schema.KIND: schema.LEADERBOARD, schema.tag("profile"): rep.profile or "",
            "mlflow.note.content": note,
            **{schema.tag(k): v for k, v in (git or git_state()).items()}}
    params = {"profile": rep.profile or "", "rows": rep.table.height,
              "tasks": ",".join(rep.table["task"].unique(maintain_order=True))}
    tags["suite.current"] = "true"
    try:
        older = [run.info.run_id for run in _leaderboard_runs(tracker)]
        with tracker.run(EXPERIMENT, f"leaderboard | {rep.profile}", params, tags,
                         description=DESCRIPTION) as log, \
                store_errors(tracker.uri, "write to"):
            scores = {metric_name(task, att): value
                      for task, part in lb.by_task(rep.table)
                      for att, value, _ in lb.ranking(part) if value is not None}
            if scores:
                log.metrics(scores, step=0)
            for path in rep.files:
                log.artifact(path)
            log.text(rep.text + "\n", "leaderboard.txt")
            log.table(_columns(rep.table), "leaderboard_table.json")
            if not rep.speed.is_empty():
                log.table(_columns(rep.speed), "speed_table.json")
            if rep.diagnostics is not None and not rep.diagnostics.is_empty():
                log.table(_columns(rep.diagnostics), "diagnostics_table.json")
            run_id = log.run_id
        _supersede(tracker, older, run_id)
    except TrackingError as err:
        raise TrackingError(f"{err} The files {', '.join(map(str, rep.files))} are written; "
                            "only the leaderboard run is missing.") from err
    return tracker.experiment(EXPERIMENT), run_id


def _leaderboard_runs(tracker):
    from .tracking import store_errors

    with store_errors(tracker.uri, "read"):
        exp = tracker.client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    return list(tracker.search([exp.experiment_id], "tags.`suite.kind` = 'leaderboard'"))


def _supersede(tracker, run_ids: list[str], by: str) -> None:
    """Mark older leaderboard runs: kept, renamed ``superseded | ...``, tagged
    ``suite.current = false`` and ``suite.superseded_by``, so one run per store is current."""
    from .tracking import store_errors

    with store_errors(tracker.uri, "write to"):
        for run_id in run_ids:
            run = tracker.client.get_run(run_id)
            if run.data.tags.get("suite.current") == "false":
                continue
            name = run.info.run_name or "leaderboard"
            if not name.startswith("superseded | "):
                tracker.client.set_tag(run_id, "mlflow.runName", f"superseded | {name}")
            tracker.client.set_tag(run_id, "suite.current", "false")
            tracker.client.set_tag(run_id, "suite.superseded_by", by)


def _columns(df: pl.DataFrame) -> dict[str, list]:
    return df.to_dict(as_series=False)


def latest(tracker) -> tuple[str, str] | None:
    """(experiment id, run id) of the newest finished leaderboard run, if any."""
    exp_id = tracker.existing(EXPERIMENT)
    if exp_id is None:
        return None
    run = next(iter(tracker.search([exp_id], KIND_FILTER)), None)
    return (exp_id, run.info.run_id) if run else None
