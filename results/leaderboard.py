"""The leaderboard, built with polars from the store (never from a process's memory).

One row per (task, attention, length): exact match and token accuracy as mean and spread
(standard deviation) over seeds, ``multiple`` = length / training length; language tasks add
perplexity and retrieval accuracy in the same long format (DESIGN.md, "Leaderboard CSV").
"""

from __future__ import annotations

import re

import polars as pl

from .tracking import Tracker

METRIC_KEY = re.compile(r"^(exact_match|token_acc|perplexity|retrieval_acc|entropy_norm|support|"
                        r"target_mass|scale)_L(\d+)$")
COLUMNS = ["task", "attention", "length", "multiple", "exact_match_mean", "exact_match_std",
           "token_acc_mean", "token_acc_std", "seeds"]
EXTRA = ["perplexity", "retrieval_acc"]


def records(tracker: Tracker) -> pl.DataFrame:
    """Long records (task, attention, seed, profile, length, train_length, metric, value) of
    every FINISHED cell run in the store."""
    rows = []
    exps = tracker.client.search_experiments()
    for exp in exps:
        token = None
        while True:
            page = tracker.client.search_runs(
                [exp.experiment_id],
                filter_string="tags.`suite.kind` = 'cell' and attributes.status = 'FINISHED'",
                max_results=1000, page_token=token)
            for run in page:
                t = run.data.tags
                for key, value in run.data.metrics.items():
                    m = METRIC_KEY.match(key)
                    if m:
                        rows.append((t["suite.task"], t["suite.attention"], int(t["suite.seed"]),
                                     t.get("suite.profile", ""), int(m.group(2)),
                                     int(t.get("suite.train_length", 0)), m.group(1), value))
            token = page.token
            if not token:
                break
    schema = {"task": pl.Utf8, "attention": pl.Utf8, "seed": pl.Int64, "profile": pl.Utf8,
              "length": pl.Int64, "train_length": pl.Int64, "metric": pl.Utf8,
              "value": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def table(recs: pl.DataFrame) -> pl.DataFrame:
    """The leaderboard CSV table: one row per (task, attention, length)."""
    if recs.is_empty():
        return pl.DataFrame(schema={c: pl.Utf8 for c in COLUMNS})
    wide = recs.pivot(on="metric", index=["task", "attention", "seed", "length", "train_length"],
                      values="value", aggregate_function="mean")
    aggs = [pl.col("seed").n_unique().alias("seeds"),
            (pl.col("length") / pl.col("train_length")).first().alias("multiple")]
    for metric in ["exact_match", "token_acc", *EXTRA]:
        if metric in wide.columns:
            aggs += [pl.col(metric).mean().alias(f"{metric}_mean"),
                     pl.col(metric).std(ddof=1).fill_null(0.0).alias(f"{metric}_std")]
    out = wide.group_by(["task", "attention", "length"]).agg(aggs)
    for col in COLUMNS:
        if col not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias(col))
    extra = [c for c in out.columns if c not in COLUMNS]
    return out.select(COLUMNS + sorted(extra)).sort(["task", "attention", "length"])


def render(tab: pl.DataFrame) -> str:
    """Per task: attention by length, exact match mean +- std (token accuracy beside it);
    the best value per column marked with *."""
    if tab.is_empty():
        return "the store holds no finished runs yet"
    out = []
    for (task,), part in tab.group_by("task", maintain_order=True):
        lengths = sorted(part["length"].unique().to_list())
        mult = {r["length"]: r["multiple"] for r in part.iter_rows(named=True)}
        lm = part["exact_match_mean"].is_null().all()
        metric, fmt = (("perplexity", "{:.2f}") if lm and "perplexity_mean" in part.columns
                       else ("exact_match", "{:.0f}"))
        key = f"{metric}_mean"
        best = part.group_by("length").agg(
            (pl.col(key).min() if metric == "perplexity" else pl.col(key).max()).alias("b"))
        best = dict(best.iter_rows())
        head = "attention".ljust(22) + "".join(f"{n} ({mult[n]:g}x)".rjust(18) for n in lengths)
        label = ("perplexity (mean over seeds)" if metric == "perplexity" else
                 "exact match % mean±std [token acc %], teacher forced")
        out += [f"\n{task}: {label}; * best per column", head]
        for (att,), rows in part.group_by("attention", maintain_order=True):
            by = {r["length"]: r for r in rows.iter_rows(named=True)}
            cells = []
            for n in lengths:
                r = by.get(n)
                if r is None or r[key] is None:
                    cells.append("-".rjust(18))
                    continue
                star = "*" if r[key] == best.get(n) else " "
                text = fmt.format(r[key])
                if metric == "exact_match":
                    text += f"±{r['exact_match_std']:.0f} [{r['token_acc_mean']:.0f}]"
                cells.append((text + star).rjust(18))
            out.append(att.ljust(22) + "".join(cells))
    return "\n".join(out).lstrip("\n")


def build(tracking_uri: str | None = None) -> tuple[pl.DataFrame, str]:
    tracker = Tracker(tracking_uri)
    tab = table(records(tracker))
    return tab, render(tab)
