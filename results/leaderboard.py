"""The leaderboard, built with polars from the store (never from a process's memory).

``records`` reads every FINISHED cell run into long records, each with its config (the run's
params but the seed); ``select`` keeps one profile and, per (task, config, seed), the newest
run, and labels each row with what sets it apart (``label``): runs of different budgets or code
are never averaged as if they were seeds; ``table`` aggregates them into the leaderboard CSV
table, one row per (task, attention, length): exact match and token accuracy as mean and spread
over seeds (sample standard deviation, empty with one seed), ``multiple`` = length / training
length; other metrics of the metric table (``tasks.metrics.METRICS``: perplexity, retrieval
accuracy) add their own columns in the same long format (docs/design.md, "Leaderboard CSV").
``render`` (terminal), ``markdown`` and ``html`` lay each task out as attention by length,
ranked by ``score`` (stated in each table's caption), with the best value per column marked on
the value itself, and nothing marked in a column where every value is 0.

Non-finite outputs: a cell run logs, per length, the % of its evaluation sequences whose logits
held a NaN or an infinity (``tasks.metrics.NONFINITE``). The table counts, per (task,
attention, length), the seeds that had any (``nonfinite_seeds``); such a length shows
``non-finite (k/n seeds)`` instead of a number, is never the best of its column, and a row with
one among the lengths its score averages is not ranked by that score: it goes below the ranked
rows, its score shown as ``non-finite``.

The attention diagnostics a cell logs at each length (``DIAGNOSTICS``: normalized entropy,
support size, max weight, target mass, learned scale; ``suite.model``'s ``_inspect``) are read
into the same records; ``diagnostics`` averages them over seeds, and ``markdown`` and ``html``
show them per task below its table, one small table per quantity (attention by length), only
the quantities some run has.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html as html_lib
import json
import re
from collections.abc import Iterable, Mapping

import polars as pl

from tasks.metrics import COMPANION, METRICS, NONFINITE, score
from tasks.metrics import headline as headline_of

from . import schema

COLUMNS = ["task", "attention", "length", "multiple", "exact_match_mean", "exact_match_std",
           "token_acc_mean", "token_acc_std", "seeds", "nonfinite_seeds"]
BASE = ["exact_match", "token_acc"]  # the metrics of the CSV's fixed columns
EXTRA = [m for m in METRICS if m not in BASE]  # columns of their own, in the table's order
CELL_FILTER = schema.where(kind=schema.CELL, status="FINISHED")
SCHEMA = {"run_id": pl.Utf8, "start": pl.Int64, "task": pl.Utf8, "attention": pl.Utf8,
          "seed": pl.Int64, "profile": pl.Utf8, "device": pl.Utf8, "commit": pl.Utf8,
          "config": pl.Utf8, "length": pl.Int64, "train_length": pl.Int64, "metric": pl.Utf8,
          "value": pl.Float64}
#: params that do not set a row apart: the seed (a row aggregates seeds) and the size of the
#: model (which the rest of the config determines)
NOT_CONFIG = ("seed", "n_params")
#: params that belong to the attention itself: shown on a row only where one attention has runs
#: of several values
PER_ATTENTION = ("code.attention",)


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    """One attention diagnostic as ``suite.model``'s ``_inspect`` logs it per length
    (``<name>_L<length>``): the mean over layers, heads and the probe rows."""

    name: str
    label: str
    about: str  # what it is, one line
    digits: int = 3
    every_row: bool = True  # False: a table of it lists only the rows that have it


#: the attention diagnostics, in the order of their tables (docs/paper.md, "What to measure")
DIAGNOSTICS: dict[str, Diagnostic] = {d.name: d for d in (
    Diagnostic("entropy_norm", "normalized entropy H(p)/log n",
               "the dispersion of a row over its n visible keys: 1 is uniform; softmax tends to "
               "1 as n grows, an entmax with a support of size O(n^b) stays at most b"),
    Diagnostic("support", "support size |{j: p_j > 0}|",
               "the keys with nonzero weight; for softmax every visible key whose float32 "
               "weight does not round to 0 (under ALiBi and NAPE the far keys of steep heads "
               "do)", digits=1),
    Diagnostic("max_weight", "max weight",
               "the largest weight of a row: whether attention to one key survives the keys "
               "added by length"),
    Diagnostic("target_mass", "target mass",
               "the weight on the positions that hold a row's answer (MQMTAR: the pair of the "
               "query whose value the row predicts; in runs of commit 515fdd9 and before, the "
               "keys of all four queries on every probe row; niah: the needle; flip_flop: the last write), for tasks that "
               "know them"),
    Diagnostic("target_mass_top", "target mass, top head",
               "the target mass of the head with the most (largest mean over probe rows of "
               "any head of any layer): the head that finds the answer, whose share the mean "
               "over every head dilutes; in runs after commit 515fdd9", every_row=False),
    Diagnostic("scale", "learned scale",
               "the factor of the queries at the probe rows (SSMax s_h log n, ASEntmax "
               "delta + beta (log n)^gamma), mean over the scaled heads; only attentions that "
               "learn one", digits=2, every_row=False),
)}
DIAGNOSTICS_ABOUT = ("Mean over seeds of each run's mean over layers, heads and probe rows (up to "
                     "8 scored rows of each of the first 32 evaluation sequences of a length; "
                     "of the first sequence only in runs before 2026-12-01); n is the number "
                     "of keys a row sees.")
#: budget fields that ``--steps`` sets (``Profile.with_budget``), so not shown beside it
FROM_STEPS = ("train.warmup", "train.val_every", "train.ckpt_every")


# ----------------------------------------------------------------------------- from the store

def records(tracker) -> pl.DataFrame:
    """Long records (one per run, length and metric) of every FINISHED cell run: the metrics
    of ``METRICS`` and the attention diagnostics (``DIAGNOSTICS``)."""
    runs = tracker.search(tracker.experiment_ids(), CELL_FILTER)
    rows = [row for run in runs for row in run_rows(run)]
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def run_rows(run) -> Iterable[tuple]:
    t = schema.fields(run.data.tags)
    commit = t.get("git_commit", "unknown")[:7]
    if t.get("git_dirty") == "true":
        commit += "+dirty"
    head = (run.info.run_id, run.info.start_time, t["task"], t["attention"],
            int(t["seed"]), t.get("profile", ""), t.get("device", ""), commit,
            config_key({**run.data.params, "attention": t["attention"], "task": t["task"]}))
    for key, value in run.data.metrics.items():
        found = schema.split_metric_key(key)
        if found and (found[0] in METRICS or found[0] in DIAGNOSTICS or found[0] == NONFINITE):
            yield (*head, found[1], int(t.get("train_length", 0)), found[0], value)


def config_key(params: Mapping[str, str]) -> str:
    """A run's config but the seed, as one string (runs of one row share it)."""
    return json.dumps({k: str(v) for k, v in sorted(params.items()) if k not in NOT_CONFIG})


def select(recs: pl.DataFrame, profile: str | None = None) -> tuple[pl.DataFrame, str | None]:
    """One profile (default: the newest run's) and, per (task, config, seed), the newest run,
    so that neither profiles, budgets, code versions nor reruns are averaged as if they were
    seeds; the attention column holds each row's label (``label``)."""
    if recs.is_empty():
        return recs, profile
    profile = profile or recs.sort("start")["profile"][-1]
    recs = recs.filter(pl.col("profile") == profile)
    newest = recs.group_by(["task", "config", "seed"]).agg(
        pl.col("run_id").sort_by("start").last())
    recs = recs.join(newest, on=["task", "config", "seed", "run_id"], how="semi")
    return label(recs), profile


def label(recs: pl.DataFrame) -> pl.DataFrame:
    """Rows say what they are: where a task's rows differ in more than their attention (a
    budget override, the code), each row's label is its attention followed by the entries that
    differ, e.g. ``softmax [steps=24]``; an attention's own code (a plugin's) is named only on
    rows of an attention that has runs of several versions of it."""
    pairs = recs.select("task", "config", "attention").unique()
    labels = []
    for (task,), part in pairs.group_by("task"):
        configs = {c: json.loads(c) for c in part["config"]}
        of = dict(zip(part["config"], part["attention"]))
        keys = sorted(set().union(*configs.values()) - {"attention"})
        varying = [k for k in keys if len({cfg.get(k) for cfg in configs.values()}) > 1]
        setup = [k for k in varying if k not in PER_ATTENTION]
        if "train.steps" in setup:
            setup = [k for k in setup if k not in FROM_STEPS]
        for c, cfg in configs.items():
            mine = [configs[o] for o in configs if of[o] == of[c]]
            own = [k for k in PER_ATTENTION if len({m.get(k) for m in mine}) > 1]
            shown = sorted(setup, key=lambda k: (k.startswith("code."), k)) + own
            entries = ", ".join(f"{_short(k)}={_value(k, cfg.get(k))}" for k in shown)
            labels.append((task, c, of[c] + (f" [{entries}]" if entries else "")))
    table_ = pl.DataFrame(labels, schema={"task": pl.Utf8, "config": pl.Utf8,
                                          "label": pl.Utf8}, orient="row")
    return (recs.join(table_, on=["task", "config"], how="left")
            .with_columns(pl.col("label").alias("attention")).drop("label"))


def _short(key: str) -> str:
    return key.removeprefix("train.").removeprefix("model.").removeprefix("setting.")


def _value(key: str, value: str | None) -> str:
    if value is None:
        return "default" if key.startswith("setting.") else "-"
    return value[:8] if key.startswith("code.") else value


# ----------------------------------------------------------------------------- the table

def table(recs: pl.DataFrame) -> pl.DataFrame:
    """The leaderboard CSV table: one row per (task, attention, length)."""
    recs = recs.filter(pl.col("metric").is_in([*METRICS, NONFINITE]))  # not the diagnostics
    if recs.is_empty():
        return pl.DataFrame(schema={c: pl.Utf8 for c in COLUMNS})
    wide = recs.pivot(on="metric", index=["task", "attention", "seed", "length", "train_length"],
                      values="value", aggregate_function="mean")
    if NONFINITE not in wide.columns:  # runs from before the suite counted them
        wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(NONFINITE))
    aggs = [pl.col("seed").n_unique().alias("seeds"),
            (pl.col("length") / pl.col("train_length")).first().alias("multiple"),
            (pl.col(NONFINITE) > 0).sum().cast(pl.Int64).alias("nonfinite_seeds")]
    for metric in METRICS:
        if metric in wide.columns:
            aggs += [pl.col(metric).mean().alias(f"{metric}_mean"),
                     pl.col(metric).std(ddof=1).alias(f"{metric}_std")]
    out = wide.group_by(["task", "attention", "length"]).agg(aggs)
    for col in COLUMNS[4:8]:
        if col not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias(col))
    extra = [f"{m}_{s}" for m in EXTRA for s in ("mean", "std") if f"{m}_{s}" in out.columns]
    return out.select(COLUMNS + extra).sort(["task", "attention", "length"])


def csv_text(tab: pl.DataFrame) -> str:
    return tab.write_csv()


def diagnostics(recs: pl.DataFrame) -> pl.DataFrame:
    """The attention diagnostics, one row per (task, attention, length): ``<name>_mean``, the
    mean over the seeds that logged it, for each diagnostic some run has (none of a diagnostic
    no run has), and ``seeds``, how many seeds logged any. Empty where no run logged any."""
    diag = recs.filter(pl.col("metric").is_in(list(DIAGNOSTICS)))
    if diag.is_empty():
        return pl.DataFrame(schema={"task": pl.Utf8, "attention": pl.Utf8, "length": pl.Int64,
                                    "seeds": pl.UInt32})
    wide = diag.pivot(on="metric", index=["task", "attention", "seed", "length"],
                      values="value", aggregate_function="mean")
    names = [d for d in DIAGNOSTICS if d in wide.columns]
    out = wide.group_by(["task", "attention", "length"]).agg(
        pl.col("seed").n_unique().alias("seeds"),
        *(pl.col(d).mean().alias(f"{d}_mean") for d in names))
    return out.select("task", "attention", "length", "seeds", *(f"{d}_mean" for d in names)
                      ).sort(["task", "attention", "length"])


def diagnostic_views(part: pl.DataFrame, diag: pl.DataFrame | None, order: list[str]
                     ) -> list[tuple[Diagnostic, list[str], list[list[str]]]]:
    """One task's diagnostics tables: per diagnostic that some row of ``diag`` has, its
    headers ("attention", then "128 (2x)" per length of the task's table ``part``) and one
    row per attention of ``order`` (the main table's rows, in its order): the mean over seeds
    per length, "-" where there is none; a row with no value at all is left out of a table of
    a diagnostic that only some attentions have (``Diagnostic.every_row``)."""
    if diag is None or diag.is_empty() or part.is_empty():
        return []
    task = part["task"][0]
    diag = diag.filter(pl.col("task") == task)
    lengths = sorted(part["length"].unique().to_list())
    mult = dict(part.select("length", "multiple").iter_rows())
    heads = ["attention", *(f"{n} ({mult[n]:g}x)" for n in lengths)]
    by = {(r["attention"], r["length"]): r for r in diag.iter_rows(named=True)}
    views = []
    for name, d in DIAGNOSTICS.items():
        col = f"{name}_mean"
        if col not in diag.columns or diag[col].is_null().all():
            continue
        rows = []
        for att in order:
            values = [(by.get((att, n)) or {}).get(col) for n in lengths]
            if not d.every_row and all(v is None for v in values):
                continue
            rows.append([att, *("-" if v is None else f"{v:.{d.digits}f}" for v in values)])
        if any(c != "-" for r in rows for c in r[1:]):
            views.append((d, heads, rows))
    return views


def diagnostics_markdown(part: pl.DataFrame, diag: pl.DataFrame | None, order: list[str],
                         lead: str = "") -> list[str]:
    """One task's diagnostics as markdown lines: what they are (after ``lead``, e.g. a name of
    the block), then per diagnostic a caption (the quantity, one line of what it means) and
    its table; no lines where no run logged any."""
    views = diagnostic_views(part, diag, order)
    if not views:
        return []
    about = DIAGNOSTICS_ABOUT[0].lower() + DIAGNOSTICS_ABOUT[1:] if lead else DIAGNOSTICS_ABOUT
    out = [lead + about, ""]
    for d, heads, rows in views:
        out += [f"*{d.label}*: {d.about}.", "", *_md_table(heads, rows)]
    return out


def score_caption(metric: str, lengths: list[int], train_length: int) -> str:
    beyond = [n for n in lengths if n > train_length]
    over = beyond or lengths
    span = f"{over[0]}" if len(over) == 1 else f"{over[0]}-{over[-1]}"
    m = METRICS[metric]
    name = m.label.split(" %")[0].split(" (")[0]
    where = "beyond training" if beyond else "every length"
    tail = "; ties: mean token accuracy there" if m.percent else (
        ", lowest first" if m.better == "min" else "")
    return f"rank: score = mean {name} at {span} ({where}){tail}"


def ranking(part: pl.DataFrame) -> list[tuple[str, float | None, float | None]]:
    """One task's attentions in rank order: (attention, score, tie-breaker). The better score
    first (higher, or lower for a lower-is-better metric such as perplexity), then the higher
    mean token accuracy over the same lengths, then the name; no score goes last."""
    metric = headline(part)
    train = train_length_of(part)
    unranked = broken(part)
    out = []
    for (att,), sub in part.group_by("attention", maintain_order=True):
        rows = {r["length"]: r for r in sub.iter_rows(named=True)}
        main = score({n: r[f"{metric}_mean"] for n, r in rows.items()}, train)
        tie = score({n: r.get(f"{COMPANION}_mean") for n, r in rows.items()}, train)
        if att in unranked:
            main = tie = None  # no number to rank by
        out.append((att, main, tie))
    sign = 1.0 if METRICS[metric].better == "min" else -1.0
    return sorted(out, key=lambda r: (r[1] is None, sign * (r[1] or 0.0),
                                      -(r[2] or 0.0), r[0]))


def _scored(rows: dict[int, dict], train_length: int) -> dict[int, dict]:
    """The rows (by length) that ``score`` averages: those beyond training, else all."""
    beyond = {n: r for n, r in rows.items() if n > train_length}
    return beyond or rows


def nonfinite(row: dict | None) -> str | None:
    """``non-finite (k/n seeds)`` where some seed's outputs at a length held a NaN or an
    infinity (the row's ``nonfinite_seeds``), else None."""
    k = (row or {}).get("nonfinite_seeds") or 0
    return f"non-finite ({k}/{row['seeds']} seeds)" if k else None


def finite_rows(part: pl.DataFrame) -> pl.DataFrame:
    """The rows of a table without non-finite outputs in any seed (those a column's best, a
    ranking by value or a plot may use)."""
    return part.filter(pl.col("nonfinite_seeds").fill_null(0) == 0)


def broken(part: pl.DataFrame) -> set[str]:
    """One task's attentions that are not ranked by their score: a length it averages had
    non-finite outputs in some seed."""
    train = train_length_of(part)
    out = set()
    for (att,), sub in part.group_by("attention", maintain_order=True):
        rows = {r["length"]: r for r in sub.iter_rows(named=True)}
        if any(nonfinite(r) for r in _scored(rows, train).values()):
            out.add(att)
    return out


def headline(part: pl.DataFrame) -> str:
    """The metric a task is ranked by: its first headline metric (``tasks.metrics``)."""
    reported = [m for m in METRICS if f"{m}_mean" in part.columns
                and part[f"{m}_mean"].is_not_null().any()]
    try:
        return headline_of(reported)
    except ValueError:  # no headline metric at all: rank by exact match (empty cells)
        return "exact_match"


def grid(part: pl.DataFrame) -> tuple[str, list[str], list[tuple[str, list]], str]:
    """One task's view, ranked: its headline metric, the column headers ("score", then
    "128 (2x)" per length), per attention in rank order one cell for the score and one per
    length (see ``_cell``; None where there is no value), and the caption of the ranking."""
    metric = headline(part)
    key = f"{metric}_mean"
    lengths = sorted(part["length"].unique().to_list())
    mult = dict(part.select("length", "multiple").iter_rows())
    ranked = ranking(part)
    finite = finite_rows(part)
    best = {n: _best(finite.filter(pl.col("length") == n)[key].to_list(), metric)
            for n in lengths}
    best_score = _best([r[1] for r in ranked], metric)
    digits = METRICS[metric].digits
    by_att = {att: {r["length"]: r for r in sub.iter_rows(named=True)}
              for (att,), sub in part.group_by("attention", maintain_order=True)}
    unranked = broken(part)
    rows = []
    for att, main, _ in ranked:
        head = None if main is None else (f"{main:.{digits}f}", "", main == best_score)
        if att in unranked:
            head = ("non-finite", "", False)
        by = by_att[att]
        rows.append((att, [head, *(_cell(by.get(n), metric, best[n]) for n in lengths)]))
    heads = ["score", *(f"{n} ({mult[n]:g}x)" for n in lengths)]
    return metric, heads, rows, score_caption(metric, lengths, train_length_of(part))


def _best(values: list, metric: str) -> float | None:
    """The best of a column; None (nothing marked) when there is none, or when every value
    is 0 for a higher-is-better metric (no attention did anything there)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if METRICS[metric].better == "min":
        return min(values)
    top = max(values)
    return top if top > 0 else None


def _cell(row: dict | None, metric: str, best: float | None) -> tuple[str, str, bool] | None:
    """(the value, what follows it: ±std and [token accuracy], whether it is the best); for a
    length with non-finite outputs the mark instead of the value (``nonfinite``)."""
    if row is None or row[f"{metric}_mean"] is None:
        return None
    mark = nonfinite(row)
    if mark:
        return mark, "", False
    value, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    digits = METRICS[metric].digits
    tail = f"±{std:.{digits}f}" if std is not None else ""
    if METRICS[metric].percent and row.get("token_acc_mean") is not None:
        tail += f" [{row['token_acc_mean']:.1f}]"
    return f"{value:.{digits}f}", tail, best is not None and value == best


def by_task(tab: pl.DataFrame):
    for (task,), part in tab.group_by("task", maintain_order=True):
        yield task, part


def train_length_of(part: pl.DataFrame) -> int:
    row = part.row(0, named=True)
    return round(row["length"] / row["multiple"])


# ----------------------------------------------------------------------------- renderings

def render(tab: pl.DataFrame, speed: pl.DataFrame | None = None) -> str:
    """The terminal rendering: per task, attention by length, best per column marked *."""
    if tab.is_empty() and (speed is None or speed.is_empty()):
        return "the store holds no finished runs yet"
    out = []
    for task, part in by_task(tab):
        metric, heads, rows, caption = grid(part)
        out += [f"{task}: {METRICS[metric].label}; mean±std over seeds; training length "
                f"{train_length_of(part)}",
                f"{caption}; * best per column (none where all are 0)",
                *_fixed(["attention", *heads], [[a, *(_star(c) for c in cs)] for a, cs in rows]),
                ""]
    for title, heads, rows in speed_views(speed):
        out += [title, *_fixed(heads, rows), ""]
    return "\n".join(out).rstrip()


def _star(cell) -> str:
    """The value, its mark (* for the best, on the value itself), then ±std [token acc]."""
    return "-" if cell is None else cell[0] + ("*" if cell[2] else " ") + cell[1]


def _fixed(heads: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [heads, *rows]) for i in range(len(heads))]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths)))
    return [line(heads).rstrip(), *(line(r).rstrip() for r in rows)]


def markdown(tab: pl.DataFrame, speed: pl.DataFrame | None = None, about: str = "",
             diag: pl.DataFrame | None = None) -> str:
    """The leaderboard as markdown: per task a table, best per column in bold, and below it
    the task's attention diagnostics (``diag``: ``diagnostics``), where any run has them."""
    out = ["# Attention leaderboard", ""]
    if about:
        out += [about, ""]
    for task, part in by_task(tab):
        metric, heads, rows, caption = grid(part)
        out += [f"## {task}", "",
                f"{METRICS[metric].label}; mean±std over seeds; training length "
                f"{train_length_of(part)}; {caption}; **bold**: best per column (none where all "
                "are 0)", ""]
        out += _md_table(["attention", *heads],
                         [[a, *(_bold(c) for c in cs)] for a, cs in rows])
        more = diagnostics_markdown(part, diag, [a for a, _ in rows])
        if more:
            out += [f"### {task}: attention diagnostics", "", *more]
    for title, heads, rows in speed_views(speed):
        out += [f"## {title}", "", *_md_table(heads, rows)]
    return "\n".join(out).rstrip() + "\n"


def _bold(cell) -> str:
    if cell is None:
        return "-"
    return (f"**{cell[0]}**" if cell[2] else cell[0]) + cell[1]


def _md_table(heads: list[str], rows: list[list[str]]) -> list[str]:
    line = lambda r: "| " + " | ".join(str(v) for v in r) + " |"  # noqa: E731
    return [line(heads), "|" + "---|" + "---:|" * (len(heads) - 1), *map(line, rows), ""]


CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
       "table{border-collapse:collapse;margin:0 0 1.5em}td,th{padding:.25em .7em;"
       "border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child"
       "{text-align:left}th{background:#f4f4f4}b{color:#0a5}img{max-width:100%}"
       "code{background:#f4f4f4;padding:0 .2em}")


def html(tab: pl.DataFrame, speed: pl.DataFrame | None = None, about: str = "",
         png_b64: str | None = None, diag: pl.DataFrame | None = None) -> str:
    """A self-contained page: the tables (best per column bold), each task's attention
    diagnostics (``diag``) where any run has them, and the plot inlined."""
    e = html_lib.escape
    out = ["<!doctype html>", "<html><head><meta charset='utf-8'>",
           "<title>Attention leaderboard</title>", f"<style>{CSS}</style></head><body>",
           "<h1>Attention leaderboard</h1>"]
    if about:
        out.append(f"<p>{_code(e(about))}</p>")
    if png_b64:
        out.append(f"<img alt='exact match against length' src='data:image/png;base64,"
                   f"{png_b64}'>")
    for task, part in by_task(tab):
        metric, heads, rows, caption = grid(part)
        out += [f"<h2>{e(task)}</h2>",
                f"<p>{e(METRICS[metric].label)}; mean±std over seeds; training length "
                f"{train_length_of(part)}; {e(caption)}; <b>bold</b>: best per column (none "
                "where all are 0)</p>",
                _html_table(["attention", *heads],
                            [[e(a), *(_html_cell(c) for c in cs)] for a, cs in rows])]
        views = diagnostic_views(part, diag, [a for a, _ in rows])
        if views:
            out += [f"<h3>{e(task)}: attention diagnostics</h3>",
                    f"<p>{e(DIAGNOSTICS_ABOUT)}</p>"]
        for d, dheads, drows in views:
            out += [f"<p><i>{e(d.label)}</i>: {e(d.about)}.</p>",
                    _html_table([e(h) for h in dheads], [[e(v) for v in r] for r in drows])]
    for title, heads, rows in speed_views(speed):
        out += [f"<h2>{e(title)}</h2>",
                _html_table([e(h) for h in heads], [[e(str(v)) for v in r] for r in rows])]
    return "\n".join([*out, "</body></html>"]) + "\n"


def _code(text: str) -> str:
    """Markdown's `code` spans as <code> (the text is escaped already)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _html_cell(cell) -> str:
    if cell is None:
        return "-"
    value, tail = html_lib.escape(cell[0]), html_lib.escape(cell[1])
    return (f"<b>{value}</b>" if cell[2] else value) + tail


def _html_table(heads: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in heads)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def about(recs: pl.DataFrame, profile: str | None) -> str:
    """Where the numbers come from: profile, runs, seeds, devices, commits, dates (UTC)."""
    if recs.is_empty():
        return ""
    runs = recs.unique("run_id")
    seeds = runs.group_by(["task", "attention"]).agg(pl.len())["len"]
    day = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date()  # noqa: E731
    span = sorted({day(runs["start"].min()), day(runs["start"].max())})
    codes = sorted({json.loads(c).get("code.suite", "")[:8] for c in runs["config"]} - {""})
    code = f"suite code {', '.join(codes)}; " if codes else ""
    return (f"Profile `{profile}`: {runs.height} cell runs, {_span(seeds)} seed(s) per cell; "
            f"device {', '.join(sorted(runs['device'].unique()))}; "
            f"commit {', '.join(sorted(runs['commit'].unique()))}; {code}"
            f"runs of {' to '.join(str(d) for d in span)}. Made by `suite leaderboard`.")


def _span(values: pl.Series) -> str:
    lo, hi = values.min(), values.max()
    return str(lo) if lo == hi else f"{lo}-{hi}"


# ----------------------------------------------------------------------------- speed (bench)

def speed_views(speed: pl.DataFrame | None) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per (device, pass) of the speed table: a title, headers (lengths) and rows (one per
    implementation, i.e. variant and backend) of "median ms (ratio to softmax)"."""
    from .speed import BASELINE

    if speed is None or speed.is_empty():
        return []
    views = []
    for (device, pass_), part in speed.group_by(["device", "pass"], maintain_order=True):
        lengths = sorted(part["T"].unique().to_list())
        rows = []
        for (impl,), sub in part.group_by("impl", maintain_order=True):
            by = {r["T"]: r for r in sub.iter_rows(named=True)}
            rows.append([impl, *(_speed_cell(by.get(n)) for n in lengths)])
        views.append((f"Speed, {pass_}, {device}: median ms (ratio to {BASELINE})",
                      ["implementation", *(f"T={n}" for n in lengths)], rows))
    return views


def _speed_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    ratio = row["ratio"]
    return f"{row['median_ms']:.1f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


# ----------------------------------------------------------------------------- for the CLI

def build(tracking_uri: str | None = None, profile: str | None = None
          ) -> tuple[pl.DataFrame, str]:
    """The leaderboard table and its terminal rendering, from the store."""
    from .tracking import Tracker

    recs, _ = select(records(Tracker(tracking_uri)), profile)
    tab = table(recs)
    return tab, render(tab)
