"""Needle in a haystack: retrieve one planted number from real text (S-NIAH-1's idea)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from .api import register
from .base import IGNORE, Batch, as_batch, check
from .corpus import windows
from .text import TextTask

KEY = b"The special magic number is "


@register("niah")
@dataclasses.dataclass(frozen=True)
class NIAH(TextTask):
    """NIAH: single-needle retrieval. A context of ``length`` bytes of real text has the needle
    ``" The special magic number is NNNNNNN. "`` (``digits`` random decimal digits) planted at
    a uniformly random byte offset; after the context comes the question, the needle's key
    ``The special magic number is ``, and the model must produce the number. Layout:
    ``[BOS] context [SEP] key answer [EOS]``; only the answer digits are scored:
    ``retrieval_acc`` is the % of samples with every digit right, ``token_acc`` the % of digits.

    This is RULER's S-NIAH-1 (one needle, a number to retrieve), with the haystack taken from
    the task's text (see ``lm``: Shakespeare by default, train/eval parts split 90/10) instead
    of repeated filler sentences. ``meta["target_positions"]`` are the token positions of the
    needle's digits (B, digits).
    """

    digits: int = 7
    metrics = {"retrieval_acc": "max", "token_acc": "max"}

    def __post_init__(self):
        check(1 <= self.digits <= 18, "niah", f"digits={self.digits} must lie in 1..18")
        super().__post_init__()

    @property
    def needle_len(self) -> int:
        return len(KEY) + self.digits + 3  # " " key digits ". "

    @property
    def min_length(self) -> int:  # type: ignore[override]
        return self.needle_len + 1

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        b, d, sp = batch_size, self.digits, self.specials
        data = self.text(split, length)
        hay = windows(
            data, self.starts(rng, data, length - self.needle_len, b), length - self.needle_len
        )
        answer = rng.integers(0, 10, size=(b, d)) + ord("0")  # (B, D) ASCII digits
        key = np.frombuffer(b" " + KEY, dtype=np.uint8).astype(np.int64)
        needle = np.concatenate(
            [np.tile(key, (b, 1)), answer, np.tile([ord("."), ord(" ")], (b, 1))], 1
        )
        at = rng.integers(0, length - self.needle_len + 1, size=b)  # (B,) needle offset
        context = np.empty((b, length), dtype=np.int64)  # (B, L)
        cols = np.arange(length)[None, :]
        inside = (cols >= at[:, None]) & (cols < at[:, None] + self.needle_len)
        context[inside] = needle.reshape(-1)
        context[~inside] = hay.reshape(-1)
        question = np.tile(np.frombuffer(KEY, dtype=np.uint8).astype(np.int64), (b, 1))
        tokens = np.concatenate(
            [
                np.full((b, 1), sp.bos),
                context,
                np.full((b, 1), sp.sep),
                question,
                answer,
                np.full((b, 1), sp.eos),
            ],
            1,
        )  # (B, T)
        targets = np.full_like(tokens, IGNORE)
        first = length + 1 + len(KEY)  # position of the last key byte, which predicts digit 0
        targets[:, first : first + d] = answer
        digit_pos = 1 + at[:, None] + len(KEY) + 1 + np.arange(d)  # (B, D)
        return as_batch(tokens, targets, length, target_positions=digit_pos)

    def decode(self, batch: Batch, i: int) -> dict[str, Any]:
        n = int(batch.lengths[i])
        row = batch.tokens[i].tolist()
        context = bytes(row[1 : n + 1])
        sep = n + 1
        answer = bytes(row[sep + 1 + len(KEY) : sep + 1 + len(KEY) + self.digits]).decode()
        found = re.search(rb" " + re.escape(KEY) + rb"(\d{%d})\. " % self.digits, context)
        return {
            "needle": found.group(0).decode() if found else None,
            "answer": answer,
            "position": found.start() if found else None,
            "context": context.decode("utf-8", "surrogateescape"),
        }
