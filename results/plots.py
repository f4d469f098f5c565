"""The leaderboard plot: each task's headline metric (exact match, or retrieval accuracy, or
perplexity for lm) against evaluation length on a log2 axis, one panel per task, the training
length dashed. One line per attention, in rank order: the mean over seeds with a band of one
standard deviation (and error bars), each attention with a marker shape of its own and its
points nudged sideways a little, so that lines which coincide (every variant at 0) all stay
visible. The title names the profile and the seeds per cell."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from tasks.metrics import METRICS

from .leaderboard import by_task, finite_rows, headline, ranking, train_length_of

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def plot(tab: pl.DataFrame, path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(by_task(tab))
    cols = min(3, len(parts))
    rows = math.ceil(len(parts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(7.0, 5.6 * cols), 4.0 * rows + 0.8),
                             squeeze=False)
    names = sorted(tab["attention"].unique().to_list())
    style = {a: (plt.get_cmap("tab10")(i % 10), MARKERS[i % len(MARKERS)])
             for i, a in enumerate(names)}
    for ax, (task, part) in zip(axes.flat, parts):
        _panel(ax, task, part, style, names)
    for ax in list(axes.flat)[len(parts):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=style[a][0], marker=style[a][1], label=a)
               for a in names]
    longest = max((len(str(n)) for n in names), default=0)  # long labels (references) stack
    fig.legend(handles=handles, loc="outside lower center",
               ncol=min(6, len(names), max(1, 90 // max(longest, 1))))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.set_layout_engine("constrained")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(ax, task: str, part: pl.DataFrame, style: dict, names: list[str]) -> None:
    metric = headline(part)
    order = [att for att, _, _ in ranking(part)]
    n = len(names)
    for rank, att in enumerate(order):
        sub = (finite_rows(part)  # no garbage 0 where outputs were not finite
               .filter((pl.col("attention") == att) & pl.col(f"{metric}_mean").is_not_null())
               .sort("length"))
        colour, marker = style[att]
        i = names.index(att)
        nudge = 2.0 ** (0.04 * (i - (n - 1) / 2))  # a few percent along the log2 axis
        x = sub["length"].to_numpy() * nudge
        y = sub[f"{metric}_mean"].to_numpy()
        s = sub[f"{metric}_std"].fill_null(0.0).to_numpy()
        lo, hi = y - s, y + s
        if METRICS[metric].percent:  # percentages: the band stays inside 0..100
            lo, hi = lo.clip(0, 100), hi.clip(0, 100)
        ax.fill_between(x, lo, hi, color=colour, alpha=0.12, linewidth=0)
        ax.errorbar(x, y, yerr=[y - lo, hi - y], color=colour, marker=marker, markersize=6,
                    markerfacecolor="none" if rank % 2 else colour, capsize=2,
                    linewidth=1.4, label=att, zorder=3 + n - rank)
    ax.axvline(train_length_of(part), color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    lengths = sorted(part["length"].unique().to_list())
    ax.set_xticks(lengths, [_short(n) for n in lengths])
    ax.minorticks_off()
    ax.set_title(task)
    ax.set_xlabel("evaluation length (dashed: training length)")
    ax.set_ylabel(METRICS[metric].label.split(" [")[0].split(" (")[0])
    if METRICS[metric].percent:
        ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)


def _short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)
