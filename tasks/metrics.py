"""Metrics under teacher forcing, accumulated over batches.

For logits (B, T, V) and targets (B, T) with -100 ignored, over the scored positions:
- ``exact_match``: % of sequences whose every scored target is the argmax (equal to greedy
  decoding's exact match, at the cost of one forward pass);
- ``token_acc``: % of scored targets that are the argmax;
- ``retrieval_acc``: exact match over the answer tokens of a retrieval task (niah);
- ``perplexity``: exp of the mean negative log-likelihood per scored token.
A task's ``metrics`` maps each name it reports to its direction ("max" or "min").
"""

from __future__ import annotations

import dataclasses
import math

import torch

IGNORE = -100  # the target of a position that is not scored
DIRECTIONS = {"exact_match": "max", "token_acc": "max", "retrieval_acc": "max", "perplexity": "min"}


@dataclasses.dataclass
class Meter:
    """Running sums for the named metrics; ``update`` per batch, ``result`` at the end."""

    names: tuple[str, ...]
    sequences: int = 0
    sequences_right: int = 0
    tokens: int = 0
    tokens_right: int = 0
    nll: float = 0.0

    def __post_init__(self):
        bad = [n for n in self.names if n not in DIRECTIONS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; known: {sorted(DIRECTIONS)}")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch: logits (B, T, V), targets (B, T)."""
        scored = targets != IGNORE  # (B, T)
        rows, cols = scored.nonzero(as_tuple=True)
        picked = logits[rows, cols].float()  # (N, V)
        wanted = targets[rows, cols]  # (N,)
        right = picked.argmax(-1) == wanted  # (N,)
        wrong_per_row = torch.zeros(targets.shape[0], dtype=torch.int64)
        wrong_per_row.index_add_(0, rows.cpu(), (~right).long().cpu())
        self.sequences += targets.shape[0]
        self.sequences_right += int((wrong_per_row == 0).sum())
        self.tokens += int(wanted.numel())
        self.tokens_right += int(right.sum())
        if "perplexity" in self.names:
            self.nll += float(torch.nn.functional.cross_entropy(picked, wanted, reduction="sum"))

    def result(self) -> dict[str, float]:
        """The metrics so far (accuracies in %)."""
        em = 100.0 * self.sequences_right / max(self.sequences, 1)
        values = {
            "exact_match": em,
            "retrieval_acc": em,
            "token_acc": 100.0 * self.tokens_right / max(self.tokens, 1),
            "perplexity": math.exp(self.nll / max(self.tokens, 1)),
        }
        return {name: values[name] for name in self.names}
