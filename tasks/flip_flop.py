"""Flip-flop: recall the bit of the last write (docs/paper.md, "Tasks")."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .api import register
from .base import Batch, Specials, Task, as_batch, check, seq2seq_arrays, seq2seq_parts

WRITE, IGNORE_OP, READ = 2, 3, 4  # command ids; bits are 0 and 1
COMMANDS = {WRITE: "write", IGNORE_OP: "ignore", READ: "read"}


@register("flip_flop")
@dataclasses.dataclass(frozen=True)
class FlipFlop(Task):
    """Flip-flop: a sequence of (command, bit) pairs; commands are write with probability
    ``p_write``, else ignore; the first command is forced to write and the last is read. The
    source is the flattened pairs without the read's bit; the target is the bit of the last
    write, then EOS.

    ``length`` counts the tokens of the pairs as in the official generator: ``length // 2``
    pairs, so the source has ``2 * (length // 2) - 1`` tokens (training lengths 32-64 tokens,
    16-32 pairs). ``p_write`` defaults to 0.1, the official generator's default, data folder
    and W&B project name (and the pilots' setting); the README recipe's 0.8 is
    ``flip_flop:p_write=0.8``.
    """

    p_write: float = 0.1
    min_length = 4

    def __post_init__(self):
        check(0 < self.p_write < 1, "flip_flop", f"p_write={self.p_write} must lie in (0, 1)")

    @property
    def specials(self) -> Specials:
        return Specials(5)

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        pairs = length // 2
        bits = rng.integers(0, 2, size=(batch_size, pairs))  # (B, P)
        middle = np.where(rng.random((batch_size, pairs - 2)) < self.p_write, WRITE, IGNORE_OP)
        cmds = np.concatenate(  # (B, P)
            [np.full((batch_size, 1), WRITE), middle, np.full((batch_size, 1), READ)], axis=1
        )
        last = pairs - 2 - np.argmax(cmds[:, pairs - 2 :: -1] == WRITE, axis=1)  # (B,)
        answer = bits[np.arange(batch_size), last][:, None]  # (B, 1)
        src = np.stack([cmds, bits], axis=2).reshape(batch_size, 2 * pairs)[:, :-1]  # (B, 2P-1)
        tokens, targets = seq2seq_arrays(src, answer, self.specials)
        return as_batch(tokens, targets, length, target_positions=2 + 2 * last[:, None])

    def decode(self, batch: Batch, i: int) -> dict[str, Any]:
        source, target = seq2seq_parts(batch, i, self.specials)
        source = source + [None]  # the read carries no bit
        ops = [(COMMANDS[c], b) for c, b in zip(source[0::2], source[1::2])]
        return {"ops": ops, "target": target[0]}
