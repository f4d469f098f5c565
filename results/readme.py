"""The README's table of the main job, written from a store: ``suite leaderboard --format
markdown`` prints it, ``suite leaderboard --write-readme [PATH]`` puts it between PATH's two
markers (README.md by default). Nothing in it is typed by hand: the numbers, the ranking, the
commit, the machine, the CPU numerics and the dates all come from the runs.

Per task: how the runs were made (profile, steps, batch, learning rate, samples per length,
seeds, commit, CPU model, the CPU settings in effect, dates, the span from the first cell's start
to the last cell's end), the table (mean +- sample standard deviation over seeds of the task's
headline metric, token accuracy in brackets, best mean per column in bold), the ranking at
the longest length, and the attention diagnostics against length (normalized entropy, support
size, max weight, target mass, learned scale: mean over seeds, one table per quantity that the
runs logged; ``leaderboard.diagnostics``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

import polars as pl

from tasks.metrics import METRICS

from . import leaderboard as lb
from . import schema

BEGIN = "<!-- suite leaderboard --write-readme: begin (generated from the store; do not edit) -->"
END = "<!-- suite leaderboard --write-readme: end -->"
#: the profile whose section the plain markers hold (the main job's); another profile's section
#: has markers that name it (``markers``)
MAIN = "quick"

#: the paper's Table 1 (docs/paper.md, "Headline numbers"): exact match % by task, attention and
#: multiple of the training length, what a task's section is set beside; data, not code
PAPER_TABLE = Path(__file__).resolve().parent / "published" / "paper-table1.json"


def paper_table() -> dict[str, dict[str, dict[float, float]]]:
    raw = json.loads(PAPER_TABLE.read_text())["table"]
    return {task: {att: {float(m): v for m, v in row.items()} for att, row in atts.items()}
            for task, atts in raw.items()}


def markers(profile: str | None) -> tuple[str, str]:
    """The lines a profile's section lies between: the plain ones for the main job's profile,
    else ones that name the profile."""
    if profile in (None, MAIN):
        return BEGIN, END
    return (f"<!-- suite leaderboard --write-readme --profile {profile}: begin (generated from "
            "the store; do not edit) -->",
            f"<!-- suite leaderboard --write-readme --profile {profile}: end -->")


class ReadmeError(RuntimeError):
    """The README has no section to write into, or the store has nothing to write."""


def section(tracker, profile: str | None = None, recs: pl.DataFrame | None = None,
            reference_runs: dict | None = None) -> str:
    """The markdown section of the newest runs of ``profile`` (default: the newest run's);
    ``recs``: the records to write instead (the leaderboard's, reference rows included, whose
    runs ``reference_runs`` holds by id)."""
    if recs is None:
        recs, profile = lb.select(lb.records(tracker), profile)
    if recs.is_empty():
        raise ReadmeError(f"the store {tracker.uri} holds no finished cell runs"
                          + (f" of profile {profile!r}" if profile else ""))
    ids = set(recs["run_id"].unique().to_list())
    runs = [r for r in tracker.search(tracker.experiment_ids(), lb.CELL_FILTER)
            if r.info.run_id in ids]
    runs += [r for i, r in (reference_runs or {}).items() if i in ids]
    tab, diag = lb.table(recs), lb.diagnostics(recs)
    out = []
    for (task,), part in tab.group_by("task", maintain_order=True):
        task_runs = [r for r in runs if r.data.tags.get(schema.tag("task")) == task]
        out += [_about(task, profile, task_runs), "", *_table(part), "", _ranking(part), ""]
        tied = _by_score(part)
        if tied:
            out += [tied, ""]
        paper = _versus_paper(task, part)
        if paper:
            out += [*paper, ""]
        order = part["attention"].unique(maintain_order=True).to_list()  # the table's rows
        out += lb.diagnostics_markdown(part, diag, order,
                                       lead=f"Attention diagnostics against length, {task}: ")
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
    mark = lb.nonfinite(row)
    if mark:
        return mark
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
    finite = lb.finite_rows(part)
    best = {n: better((v for v in finite.filter(pl.col("length") == n)[f"{metric}_mean"]
                       .to_list() if v is not None), default=None) for n in lengths}
    if METRICS[metric].percent:  # nothing is best in a column where every row has 0
        best = {n: (b if b else None) for n, b in best.items()}
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
    broken = rows.filter(pl.col("nonfinite_seeds").fill_null(0) > 0)
    rows = lb.finite_rows(rows)
    rows = rows.sort(f"{metric}_mean", descending=METRICS[metric].better != "min")
    digits = METRICS[metric].digits
    mult = part.filter(pl.col("length") == longest)["multiple"][0] if part.height else 0
    items = [f"{r['attention']} {r[f'{metric}_mean']:.{digits}f}"
             + (f" ± {r[f'{metric}_std']:.{digits}f}" if r[f"{metric}_std"] is not None else "")
             for r in rows.iter_rows(named=True)]
    items += [f"{r['attention']} {lb.nonfinite(r)}" for r in broken.iter_rows(named=True)]
    return (f"Ranked by the mean at {longest} ({mult:g}x the training length): "
            + ", ".join(items) + ".")


def _versus_paper(task: str, part: pl.DataFrame) -> list[str]:
    """The paper's Table 1 at the lengths of the table, and at each length whether the order of
    the attentions that both rank (by mean exact match) is the paper's."""
    paper = paper_table().get(task)
    if not paper or _metric(part) != "exact_match":
        return []
    ours = {(_base(r["attention"]), r["multiple"]): r["exact_match_mean"]
            for r in part.iter_rows(named=True) if not lb.nonfinite(r)}
    mults = sorted({m for (_, m) in ours})
    shared = [a for a in paper if any((a, m) in ours for m in mults)]
    if not shared:
        return []
    lines = ["The paper's Table 1 (exact match %, the best of several seeds and learning rates "
             "per cell, trained for the paper's full steps) at the same lengths:", "",
             "| attention | " + " | ".join(f"{m:g}x" for m in mults) + " |",
             "|---|" + "---:|" * len(mults)]
    for a in shared:
        lines.append(f"| {a} (paper) | " + " | ".join(
            f"{paper[a][m]:g}" if m in paper[a] else "-" for m in mults) + " |")
    verdicts = []
    for m in mults:
        both = [a for a in shared if m in paper[a] and (a, m) in ours]
        if len(both) < 2:
            continue
        pairs = [(a, b) for i, a in enumerate(both) for b in both[i + 1:]
                 if paper[a][m] != paper[b][m]]
        if not pairs:
            continue
        kept = [(a, b) for a, b in pairs  # the same strict order (a tie here is not kept)
                if ours[(a, m)] != ours[(b, m)]
                and (paper[a][m] > paper[b][m]) == (ours[(a, m)] > ours[(b, m)])]
        verdicts.append(f"{m:g}x: " + ("holds" if len(kept) == len(pairs) else
                                       f"{len(kept)} of {len(pairs)} pairs"))
    if verdicts:
        lines += ["", "The paper's order (by mean, on the pairs the paper separates): "
                  + "; ".join(verdicts) + "."]
    return lines


def _base(label: str) -> str:
    """The attention of a row's label: ``softmax`` of ``softmax (reference: ...)`` or of
    ``softmax [steps=24]``."""
    return label.split(" (reference: ")[0].split(" [")[0]


def _by_score(part: pl.DataFrame) -> str | None:
    """Where the longest length does not separate the rows (all equal there), the order by the
    leaderboard's score (the mean over the lengths beyond training)."""
    metric = _metric(part)
    longest = part.filter(pl.col("length") == part["length"].max())[f"{metric}_mean"]
    if longest.drop_nulls().n_unique() > 1:
        return None
    ranked = [(a, v) for a, v, _ in lb.ranking(part) if v is not None]
    digits = METRICS[metric].digits
    train = part.filter(pl.col("multiple") == 1)["length"]
    beyond = sorted(n for n in part["length"].unique().to_list()
                    if not train.len() or n > train[0])
    span = f"{beyond[0]}-{beyond[-1]}" if len(beyond) > 1 else str(beyond[0]) if beyond else ""
    return (f"Every row is equal at the longest length; by the leaderboard's score (the mean "
            f"at {span}): " + ", ".join(f"{a} {v:.{digits}f}" for a, v in ranked) + ".")


def write(path: Path, text: str, profile: str | None = None) -> Path:
    """Replace what lies between ``profile``'s markers in ``path`` with ``text`` (atomically);
    where ``path`` has no markers that name the profile, between the plain ones."""
    path = Path(path)
    try:
        old = path.read_text()
    except OSError as err:
        raise ReadmeError(f"cannot read {path}: {err}") from None
    BEGIN, END = markers(profile)  # noqa: N806
    if BEGIN not in old:  # no section of this profile's own: the plain markers
        BEGIN, END = markers(None)  # noqa: N806
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
