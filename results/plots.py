"""The leaderboard plot: each task's headline metric (exact match, or retrieval accuracy, or
perplexity for lm) against evaluation length on a log2 axis, one line per attention (mean over
seeds, a band of one standard deviation), one panel per task, the training length dashed."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from tasks.metrics import METRICS

from .leaderboard import _tasks, _train_length, headline


def plot(tab: pl.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(_tasks(tab))
    cols = min(3, len(parts))
    rows = math.ceil(len(parts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    names = sorted(tab["attention"].unique().to_list())
    colour = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(names)}
    for ax, (task, part) in zip(axes.flat, parts):
        _panel(ax, task, part, colour)
    for ax in list(axes.flat)[len(parts):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colour[a], marker="o", label=a) for a in names]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(names)))
    fig.set_layout_engine("constrained")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(ax, task: str, part: pl.DataFrame, colour: dict) -> None:
    metric = headline(part)
    for (att,), sub in part.sort("length").group_by("attention", maintain_order=True):
        sub = sub.filter(pl.col(f"{metric}_mean").is_not_null())
        x = sub["length"].to_numpy()
        y = sub[f"{metric}_mean"].to_numpy()
        s = sub[f"{metric}_std"].fill_null(0.0).to_numpy()
        ax.plot(x, y, marker="o", color=colour[att], label=att)
        ax.fill_between(x, y - s, y + s, color=colour[att], alpha=0.15, linewidth=0)
    ax.axvline(_train_length(part), color="grey", linestyle="--", linewidth=1)
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
