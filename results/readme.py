"""The README's table of the main job, written from a store: ``suite leaderboard --format
markdown`` prints it, ``suite leaderboard --write-readme [PATH]`` puts it between PATH's two
markers (README.md by default). Nothing in it is typed by hand: the numbers, the ranking, the
commit, the machine, the CPU numerics and the dates all come from the runs.

Per task: how the runs were made (profile, steps, batch, learning rate, samples per length,
seeds, commit, CPU model, the CPU settings in effect, dates, the span from the first cell's start
to the last cell's end), the table (mean +- sample standard deviation over seeds of the task's
headline metric, token accuracy in brackets, best mean per column in bold), and the ranking at
the longest length.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import polars as pl

from tasks.metrics import METRICS

from . import leaderboard as lb
from . import schema

BEGIN = "<!-- suite leaderboard --write-readme: begin (generated from the store; do not edit) -->"
END = "<!-- suite leaderboard --write-readme: end -->"


class ReadmeError(RuntimeError):
    """The README has no section to write into, or the store has nothing to write."""


def section(tracker, profile: str | None = None) -> str:
    """The markdown section of the newest runs of ``profile`` (default: the newest run's)."""
    recs, profile = lb.select(lb.records(tracker), profile)
    if recs.is_empty():
        raise ReadmeError(f"the store {tracker.uri} holds no finished cell runs"
                          + (f" of profile {profile!r}" if profile else ""))
    ids = set(recs["run_id"].unique().to_list())
    runs = [r for r in tracker.search(tracker.experiment_ids(), lb.CELL_FILTER)
            if r.info.run_id in ids]
    tab = lb.table(recs)
    out = []
    for (task,), part in tab.group_by("task", maintain_order=True):
        task_runs = [r for r in runs if r.data.tags.get(schema.tag("task")) == task]
        out += [_about(task, profile, task_runs), "", *_table(part), "", _ranking(part), ""]
    return "\n".join(out).rstrip() + "\n"


def _one(values: set, what: str) -> str:
    return ", ".join(sorted(values)) if values else f"(no {what} recorded)"


def _about(task: str, profile: str, runs: list) -> str:
    tags = [schema.fields(r.data.tags) for r in runs]
    params = [r.data.params for r in runs]
    seeds = sorted({int(t["seed"]) for t in tags})
    per = {}
    for t in tags:
        per.setdefault(t["attention"], set()).add(t["seed"])
    counts = sorted({len(s) for s in per.values()})
    commits = {t.get("git_commit", "unknown")[:7] + ("+dirty" if t.get("git_dirty") == "true"
                                                     else "") for t in tags}
    budget = ", ".join(
        f"{label} {_one({p.get(key, '?') for p in params}, key)}" for key, label in
        (("train.steps", "steps"), ("train.batch_size", "batch"), ("train.lr", "lr"),
         ("train.eval_samples", "samples per length")))
    numerics = _one({f"torch kernels {t.get('cpu_isa', '?')}, {t.get('cpu_threads', '?')} "
                     f"thread(s), MKL_CBWR={t.get('mkl_cbwr', '?')}, numba "
                     f"{t.get('numba_cpu', '?')}" for t in tags if "cpu_isa" in t}, "CPU settings")
    start = min(r.info.start_time for r in runs)
    end = max((r.info.end_time or r.info.start_time) for r in runs)
    days = sorted({_day(r.info.start_time) for r in runs})
    versions = _one({r.data.tags.get("version.torch", "?") for r in runs}, "torch version")
    devices = _one({t.get("device", "?") for t in tags}, "device")
    span = end - start
    cpu = [r.data.metrics["cpu_seconds"] for r in runs if "cpu_seconds" in r.data.metrics]
    cost = (f"; the cells' training and evaluation took {sum(cpu):.0f} CPU seconds in all "
            f"({sum(cpu) / len(cpu):.0f} per cell)" if cpu else "")
    return (f"**{task}**, profile `{profile}` ({budget}); {len(per)} attentions x "
            f"{'-'.join(map(str, counts))} seeds (seeds {_seeds(seeds)}), {len(runs)} cell runs. "
            f"Commit {_one(commits, 'commit')}; {devices}; torch {versions}; CPU numerics: "
            f"{numerics}. Runs of "
            f"{' to '.join(days)} (UTC), {span // 60000} min {span // 1000 % 60} s from the first "
            f"cell's start to the last cell's end{cost}.")


def _seeds(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _day(ms: int) -> str:
    return str(dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date())


def _metric(part: pl.DataFrame) -> str:
    return lb.headline(part)


def _cell(row: dict, metric: str, best: float | None) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "-"
    digits = METRICS[metric].digits
    text = f"{mean:.{digits}f}"
    text = f"**{text}**" if best is not None and mean == best else text
    text += f" ± {std:.{digits}f}" if std is not None else ""
    if METRICS[metric].percent and row.get("token_acc_mean") is not None:
        text += f" [{row['token_acc_mean']:.1f}]"
    return text


def _table(part: pl.DataFrame) -> list[str]:
    metric = _metric(part)
    better = max if METRICS[metric].better != "min" else min
    lengths = sorted(part["length"].unique().to_list())
    mult = dict(part.select("length", "multiple").iter_rows())
    best = {n: better(v for v in part.filter(pl.col("length") == n)[f"{metric}_mean"].to_list()
                      if v is not None) for n in lengths}
    seeds = sorted(set(part["seeds"].to_list()))
    head = (f"{METRICS[metric].label}: mean ± std over {'-'.join(map(str, seeds))} seeds; "
            "**bold**: best mean per column")
    lines = [head, "", "| attention | " + " | ".join(f"{n} ({mult[n]:g}x)" for n in lengths)
             + " |", "|---|" + "---:|" * len(lengths)]
    for (att,), sub in part.group_by("attention", maintain_order=True):
        by = {r["length"]: r for r in sub.iter_rows(named=True)}
        lines.append(f"| {att} | " + " | ".join(_cell(by[n], metric, best[n]) if n in by
                                                 else "-" for n in lengths) + " |")
    return lines


def _ranking(part: pl.DataFrame) -> str:
    """The attentions ordered by their mean at the longest length, with the spread."""
    metric = _metric(part)
    longest = part["length"].max()
    rows = part.filter(pl.col("length") == longest).drop_nulls(f"{metric}_mean")
    rows = rows.sort(f"{metric}_mean", descending=METRICS[metric].better != "min")
    digits = METRICS[metric].digits
    mult = rows["multiple"][0] if rows.height else 0
    items = [f"{r['attention']} {r[f'{metric}_mean']:.{digits}f}"
             + (f" ± {r[f'{metric}_std']:.{digits}f}" if r[f"{metric}_std"] is not None else "")
             for r in rows.iter_rows(named=True)]
    return (f"Ranked by the mean at {longest} ({mult:g}x the training length): "
            + ", ".join(items) + ".")


def write(path: Path, text: str) -> Path:
    """Replace what lies between the markers of ``path`` with ``text`` (atomically)."""
    path = Path(path)
    try:
        old = path.read_text()
    except OSError as err:
        raise ReadmeError(f"cannot read {path}: {err}") from None
    i, j = old.find(BEGIN), old.find(END)
    if i < 0 or j < i:
        raise ReadmeError(f"{path} has no section to write into: put the lines\n{BEGIN}\n{END}\n"
                          "where the table goes")
    new = old[: i + len(BEGIN)] + "\n" + text + old[j:]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(new)
    os.replace(tmp, path)
    return path
