"""MQMTAR: multi-query multi-token associative recall (docs/paper.md, "Tasks")."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .api import register
from .base import Batch, Specials, Task, as_batch, check, seq2seq_arrays, seq2seq_parts
from .metrics import IGNORE

SPACE, KV_SEP, Q_SEP = 0, 1, 2  # token ids; symbol s is token s + 3
FIRST_SYMBOL = 3


@register("mqmtar")
@dataclasses.dataclass(frozen=True)
class MQMTAR(Task):
    """MQMTAR: in-context recall of multi-token values by multi-token keys.

    A sample holds ``n = floor(0.8 * length / (key_len + value_len + 2))`` key-value pairs
    (capped at ``max_pairs``), keys distinct and values distinct within the sample, each
    drawn uniformly from the ``vocab ** key_len`` (``vocab ** value_len``) strings over a
    ``vocab``-symbol alphabet, so the key->value pairing is random per sample. Each pair is
    written ``k1 k2 : v1 v2`` followed by at least one space, at a uniformly random offset in
    its own block of ``length // n`` (or one more) space tokens, so the kv region is exactly
    ``length`` tokens. Then ``queries`` queries ``? k1 k2`` follow, keys drawn uniformly with
    replacement from the sample's pairs; the target is ``? v1 v2`` per query.

    Defaults follow the official generator: 256 symbols, 2-token keys and values, 4 queries,
    at most 10,000 pairs (its per-split pool of 10,000 key and 10,000 value strings; one
    uniform pool per sample draw has the same distribution per sample). Where it places each
    pair by deleting random spaces around it, the pair's offset here is uniform in its block.
    Training 32-64, evaluation 64-65,536 (1024x). ``meta["target_positions"]`` are the token
    positions of each queried key (B, queries, key_len), ``meta["value_positions"]`` those of
    its value.
    """

    vocab: int = 256
    key_len: int = 2
    value_len: int = 2
    queries: int = 4
    max_pairs: int = 10_000
    eval_lengths = tuple(64 * 2**k for k in range(11))  # 64 ... 65536

    def __post_init__(self):
        for key in ("vocab", "key_len", "value_len", "queries", "max_pairs"):
            check(getattr(self, key) >= 1, "mqmtar", f"{key}={getattr(self, key)} must be >= 1")
        check(
            self.max_pairs >= self.queries,
            "mqmtar",
            f"max_pairs={self.max_pairs} is below queries={self.queries}; raise max_pairs",
        )
        for key in ("key_len", "value_len"):
            check(
                self.vocab ** getattr(self, key) < 2**62,
                "mqmtar",
                f"{self.vocab}**{key} overflows int64; use a shorter {key} or a smaller vocab",
            )
        self.check_vocab(max(self.eval_lengths))

    @property
    def unit(self) -> int:
        """Tokens of one pair and its trailing space."""
        return self.key_len + self.value_len + 2

    @property
    def min_length(self) -> int:  # type: ignore[override]
        """The shortest kv region that holds one pair per query."""
        return -(-self.queries * self.unit * 5 // 4)

    def pairs(self, length: int) -> int:
        return min(4 * length // (5 * self.unit), self.max_pairs)

    def check_vocab(self, length: int) -> None:
        """Fail unless the alphabet has enough distinct keys and values for ``length``."""
        n = self.pairs(length)
        for what, size in (("key", self.key_len), ("value", self.value_len)):
            if self.vocab**size < n:
                need = next(v for v in range(self.vocab, n + 1) if v**size >= n)
                raise self.fail(
                    f"vocab={self.vocab} gives {self.vocab**size} distinct {size}-token {what}s, "
                    f"fewer than the {n} pairs at length {length}; use vocab >= {need} "
                    f"or max_pairs <= {self.vocab**size}"
                )

    @property
    def specials(self) -> Specials:
        return Specials(FIRST_SYMBOL + self.vocab)

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        self.check_vocab(length)
        n, b = self.pairs(length), batch_size
        keys = self.strings(rng, b, n, self.key_len)  # (B, n, K)
        values = self.strings(rng, b, n, self.value_len)  # (B, n, V)
        starts = self.pair_starts(rng, b, n, length)  # (B, n)
        region = np.full((b, length), SPACE, dtype=np.int64)  # (B, L)
        pair = np.concatenate([keys, np.full((b, n, 1), KV_SEP), values], axis=2)  # (B, n, U-1)
        cols = starts[:, :, None] + np.arange(self.unit - 1)  # (B, n, U-1)
        np.put_along_axis(region, cols.reshape(b, -1), pair.reshape(b, -1), axis=1)
        asked = rng.integers(0, n, size=(b, self.queries))  # (B, Q)
        rows = np.arange(b)[:, None]
        q_sep = np.full((b, self.queries, 1), Q_SEP)
        src = np.concatenate(
            [region, np.concatenate([q_sep, keys[rows, asked]], 2).reshape(b, -1)], 1
        )
        trg = np.concatenate([q_sep, values[rows, asked]], 2).reshape(b, -1)  # (B, Q*(V+1))
        tokens, targets = seq2seq_arrays(src, trg, self.specials)
        key_pos = 1 + starts[rows, asked][:, :, None] + np.arange(self.key_len)  # (B, Q, K)
        value_pos = key_pos[:, :, -1:] + 2 + np.arange(self.value_len)  # (B, Q, V)
        return as_batch(
            tokens, targets, length, target_positions=key_pos, value_positions=value_pos
        )

    def answer_positions(self, batch: Batch, rows: torch.Tensor) -> torch.Tensor | None:
        """A row that predicts a value token of query i needs query i's pair: its key, the
        ``:`` and its value (``key_len + 1 + value_len`` positions); a row that predicts a
        ``?`` or the end needs nothing (-1)."""
        b = rows.shape[0]
        keys = batch.meta["target_positions"][:b]  # (B, Q, K)
        sep = (batch.targets[:b] != IGNORE).int().argmax(1)  # (B,) the first scored position
        step = self.value_len + 1  # "? v1 v2" per query
        offset = rows - sep[:, None]  # (B, R): which target token the row predicts
        query = (offset // step).clamp(0, self.queries - 1)
        needs = (offset % step != 0) & (offset > 0) & (offset < self.queries * step)
        first = keys[torch.arange(b)[:, None], query, 0]  # (B, R) the pair's first token
        pair = first[..., None] + torch.arange(self.key_len + 1 + self.value_len)
        return torch.where(needs[..., None], pair, -1)

    def strings(self, rng: np.random.Generator, b: int, n: int, size: int) -> np.ndarray:
        """``n`` distinct ``size``-token strings per row, as token ids (B, n, size)."""
        codes = np.stack([rng.choice(self.vocab**size, n, replace=False) for _ in range(b)])
        digits = (codes[:, :, None] // self.vocab ** np.arange(size - 1, -1, -1)) % self.vocab
        return digits + FIRST_SYMBOL

    def pair_starts(self, rng: np.random.Generator, b: int, n: int, length: int) -> np.ndarray:
        """The start of each pair (B, n): block j spans ``length // n`` tokens (the first
        ``length % n`` blocks one more), and the pair sits uniformly inside it."""
        widths = np.full(n, length // n)
        widths[: length % n] += 1
        block_start = np.concatenate([[0], np.cumsum(widths)[:-1]])
        slack = widths - self.unit + 1  # number of possible offsets, >= 1
        return block_start + rng.integers(0, slack, size=(b, n))

    def decode(self, batch: Batch, i: int) -> dict[str, Any]:
        source, target = seq2seq_parts(batch, i, self.specials)
        length = int(batch.lengths[i])
        region, query_part = source[:length], source[length:]
        k, v = self.key_len, self.value_len
        seps = [j for j, t in enumerate(region) if t == KV_SEP]
        pairs = [
            (self.symbols(region[j - k : j]), self.symbols(region[j + 1 : j + 1 + v])) for j in seps
        ]
        queries = [
            self.symbols(query_part[j + 1 : j + 1 + k]) for j in range(0, len(query_part), k + 1)
        ]
        answers = [self.symbols(target[j + 1 : j + 1 + v]) for j in range(0, len(target), v + 1)]
        return {"pairs": pairs, "queries": queries, "target": answers}

    @staticmethod
    def symbols(ids: list[int]) -> tuple[int, ...]:
        return tuple(t - FIRST_SYMBOL for t in ids)
