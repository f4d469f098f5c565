"""Metrics under teacher forcing, accumulated over batches, and the one table of them.

For logits (B, T, V) and targets (B, T) with -100 ignored, over the scored positions:
- ``exact_match``: % of sequences whose every scored target is the argmax (equal to greedy
  decoding's exact match, at the cost of one forward pass);
- ``token_acc``: % of scored targets that are the argmax;
- ``retrieval_acc``: exact match over the answer tokens of a retrieval task;
- ``perplexity``: exp of the mean negative log-likelihood per scored token.
A task's ``metrics`` maps each name it reports to its direction ("max" or "min").

Every meter also counts the sequences whose logits hold a NaN or an infinity anywhere
(``NONFINITE``: % of sequences, reported at every length whatever the task's metrics). Such a
sequence scores nothing: all its targets count as wrong (an argmax over NaN picks an index all
the same, which could match the target), and its tokens add an infinite negative
log-likelihood, so that an attention which breaks at some length is never scored as if it had
merely guessed there.

``METRICS`` says, per metric, how it is computed, which way is better and how it is shown: the
trainer's checkpoint selection (``selection_score``), the console summary (``summary``) and the
leaderboard read it, so a new metric is one row here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

import torch

IGNORE = -100  # the target of a position that is not scored


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: its value from a Meter's sums, its direction and how it is shown."""

    name: str
    better: str  # "max" or "min"
    value: Callable[[Meter], float]
    label: str  # the leaderboard's caption of a task ranked by it
    short: str  # its name in the one-line console summary
    digits: int = 1  # decimals in tables
    percent: bool = True  # a percentage, shown with token accuracy beside it
    headline: int | None = None  # rank as a task's headline (a task is ranked by the first
    # of these it reports); None: never the headline


def _seq(m: Meter) -> float:
    return 100.0 * m.sequences_right / max(m.sequences, 1)


#: every metric, in the order of the leaderboard's columns
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("exact_match", "max", _seq, "exact match % [token accuracy %], teacher forced", "em",
           headline=0),
    Metric("token_acc", "max", lambda m: 100.0 * m.tokens_right / max(m.tokens, 1),
           "token accuracy %, teacher forced", "tok"),
    Metric("perplexity", "min", lambda m: math.exp(m.nll / max(m.tokens, 1)),
           "perplexity per byte (lower is better)", "ppl", digits=2, percent=False, headline=2),
    Metric("retrieval_acc", "max", _seq, "retrieval accuracy % [token accuracy %]", "ret",
           headline=1),
)}
COMPANION = "token_acc"  # shown beside a percentage headline, and its tie-break
#: the % of sequences with a non-finite logit, in every meter's result
NONFINITE = "nonfinite"


def headline(names: Iterable[str]) -> str:
    """The metric a task is ranked by: the first headline metric among ``names``."""
    ranked = sorted((m.headline, n) for n in names if (m := METRICS.get(n)) is not None
                    and m.headline is not None)
    if not ranked:
        raise ValueError(f"no headline metric among {sorted(names)}; headline metrics: "
                         f"{', '.join(n for n, m in METRICS.items() if m.headline is not None)}")
    return ranked[0][1]


def selection_score(values: Mapping[str, float]) -> float:
    """Higher is better: the headline metric (negated where lower is better), with token
    accuracy breaking ties of a percentage (both are 0 early in training)."""
    metric = METRICS[headline(values)]
    score = values[metric.name] if metric.better == "max" else -values[metric.name]
    if metric.percent and COMPANION in values:
        score += 1e-3 * values[COMPANION]
    return score


def summary(values: Mapping[str, float]) -> str:
    """The headline value of one evaluation length for a console line, e.g. ``95%/97%``
    (with token accuracy) or ``ppl 3.25``."""
    metric = METRICS[headline(values)]
    value = values[metric.name]
    if metric.percent:
        return f"{value:.0f}%/{values.get(COMPANION, 0):.0f}%"
    return f"{metric.short} {value:.{metric.digits}f}"


@dataclasses.dataclass
class Meter:
    """Running sums for the named metrics; ``update`` per batch, ``result`` at the end."""

    names: tuple[str, ...]
    sequences: int = 0
    sequences_right: int = 0
    tokens: int = 0
    tokens_right: int = 0
    nll: float = 0.0
    sequences_nonfinite: int = 0

    def __post_init__(self):
        bad = [n for n in self.names if n not in METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; known: {sorted(METRICS)}")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch: logits (B, T, V), targets (B, T)."""
        scored = targets != IGNORE  # (B, T)
        finite = torch.isfinite(logits).flatten(1).all(1)  # (B,) every logit of the sequence
        rows, cols = scored.nonzero(as_tuple=True)
        picked = logits[rows, cols].float()  # (N, V)
        wanted = targets[rows, cols]  # (N,)
        right = (picked.argmax(-1) == wanted) & finite[rows]  # (N,)
        wrong_per_row = torch.zeros(targets.shape[0], dtype=torch.int64)
        wrong_per_row.index_add_(0, rows.cpu(), (~right).long().cpu())
        self.sequences += targets.shape[0]
        self.sequences_right += int((wrong_per_row == 0).sum())
        self.tokens += int(wanted.numel())
        self.tokens_right += int(right.sum())
        bad = int((~finite).sum())
        self.sequences_nonfinite += bad
        if "perplexity" in self.names:
            ok = finite[rows]  # (N,)
            nll = torch.nn.functional.cross_entropy(picked[ok], wanted[ok], reduction="sum")
            self.nll += float(nll) + (math.inf if bad else 0.0)

    def result(self) -> dict[str, float]:
        """The metrics so far (accuracies in %), and ``NONFINITE``."""
        return {**{name: METRICS[name].value(self) for name in self.names},
                NONFINITE: 100.0 * self.sequences_nonfinite / max(self.sequences, 1)}


def score(values: Mapping[int, float | None], train_length: int) -> float | None:
    """The number a task's rows are ranked by: the mean of a metric over the lengths beyond
    the training length (all lengths where none is beyond). Shared by the leaderboard (over
    seed means) and each cell's run (its ``score`` metric); here, not in the leaderboard, so
    that a run on a machine without polars or MLflow (a GPU node writing an offline log)
    computes it too."""
    beyond = [v for n, v in values.items() if n > train_length and v is not None]
    if not beyond:
        beyond = [v for v in values.values() if v is not None]
    return sum(beyond) / len(beyond) if beyond else None
