"""What every task shares: the batch, the task base class, seeds, lengths and layouts.

A task is a frozen dataclass whose fields are its spec parameters. ``sample(rng, length,
batch_size)`` draws a :class:`Batch` from a numpy Generator and nothing else, so a batch is a
deterministic function of the generator's state. ``length`` is the source length in the
paper's sense (the kv-region length for mqmtar, the context length for the text tasks).

Targets are aligned for next-token training: the model's output at position t is scored
against ``targets[t]``; -100 is ignored. Seq2seq tasks are laid out ``[BOS] src [SEP] trg
[EOS]`` with the loss on the target tokens and EOS; token-classification tasks put the label
of position t's token at ``targets[t]``.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from attentions.spec import SpecError, canonical, config_params, unknown

from .metrics import IGNORE, Meter

SPLITS = {"train": 0, "eval": 1}
LADDER_4096 = tuple(64 * 2**k for k in range(7))  # 64 ... 4096


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch. ``tokens`` and ``targets`` are int64 (B, T); ``lengths`` the source length
    of each row (B,); ``meta`` holds per-row tensors with B first (e.g. ``target_positions``)."""

    tokens: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T)
    lengths: torch.Tensor  # (B,)
    meta: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]


@dataclasses.dataclass(frozen=True)
class Specials:
    """Special tokens appended above ``n`` data ids, in the official order pad, bos, eos,
    mask, sep."""

    n: int

    pad = property(lambda self: self.n)
    bos = property(lambda self: self.n + 1)
    eos = property(lambda self: self.n + 2)
    mask = property(lambda self: self.n + 3)
    sep = property(lambda self: self.n + 4)
    size = property(lambda self: self.n + 5)


@dataclasses.dataclass(frozen=True)
class Task:
    """Base class of every task; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str] = "task"
    version: ClassVar[int] = 1
    metrics: ClassVar[Mapping[str, str]] = {"exact_match": "max", "token_acc": "max"}
    train_lengths: ClassVar[tuple[int, int]] = (32, 64)
    eval_lengths: ClassVar[tuple[int, ...]] = LADDER_4096
    min_length: ClassVar[int] = 1

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``flip_flop:p_write=0.8``."""
        return canonical(self.name, config_params(self))

    @property
    def train_length(self) -> int:
        """The in-distribution length that evaluation multiples refer to."""
        return self.train_lengths[1]

    @property
    def specials(self) -> Specials:
        """The special tokens, above the task's data ids (tasks with another layout override
        ``vocab_size`` and ``pad_id`` instead)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.specials.size

    @property
    def pad_id(self) -> int:
        return self.specials.pad

    def meter(self) -> Meter:
        """A fresh accumulator of this task's metrics."""
        return Meter(tuple(self.metrics))

    def answer_positions(self, batch: Batch, rows: torch.Tensor) -> torch.Tensor | None:
        """The token positions that hold the answer of each probed row (the attention
        diagnostics' target mass): (B, R, K) for ``rows`` (B, R) of the batch's first B
        sequences, -1 where a row has fewer (or none), or None for a task that knows none. By
        default every row gets all of ``meta["target_positions"]`` (flip_flop's last write,
        niah's needle); a task whose rows answer different things (MQMTAR's queries) says
        which row needs which."""
        found = batch.meta.get("target_positions")
        if found is None:
            return None
        found = found[: rows.shape[0]].reshape(rows.shape[0], -1)
        return found[:, None, :].expand(-1, rows.shape[1], -1)

    def fail(self, message: str) -> SpecError:
        return SpecError(f"{self.spec}: {message}")

    def rng(self, seed: int, split: str, step: int | None = None) -> np.random.Generator:
        """A numpy Generator for ``split`` ("train" or "eval"); the streams of the two splits
        (and of different tasks) are independent children of one SeedSequence. With ``step``,
        the generator of that one training step: a child stream of its own, so that any step's
        batch can be drawn without the ones before it (by several data workers at once, or
        after a resume)."""
        if split not in SPLITS:
            raise unknown("split", split, SPLITS)
        key = (zlib.crc32(self.name.encode()), SPLITS[split])
        if step is not None:
            key = (*key, int(step))
        return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))

    def split_of(self, rng: np.random.Generator) -> str:
        """The split a generator from :meth:`rng` was made for ("train" if it was not)."""
        seq = getattr(rng.bit_generator, "seed_seq", None)
        key = getattr(seq, "spawn_key", ())
        if len(key) in (2, 3) and key[0] == zlib.crc32(self.name.encode()):
            return {v: k for k, v in SPLITS.items()}.get(key[1], "train")
        return "train"

    def sample(
        self,
        rng: np.random.Generator,
        length: int | tuple[int, int],
        batch_size: int,
        split: str | None = None,
    ) -> Batch:
        """Draw ``batch_size`` examples of source length ``length``; a ``(lo, hi)`` pair draws
        each row's length uniformly from lo..hi and right-pads (pad token, target -100).
        ``split`` matters only to tasks with held-out data (lm, niah); by default it is the
        split ``rng`` was made for by :meth:`rng`."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"{self.name}: rng must be a numpy Generator, e.g. task.rng(0, 'train')"
            )
        if not is_int(batch_size) or batch_size < 1:
            raise self.fail(f"batch_size must be a positive int, got {batch_size!r}")
        split = self.split_of(rng) if split is None else split
        if split not in SPLITS:
            raise unknown("split", split, SPLITS)
        if isinstance(length, (tuple, list)):
            return self._sample_mixed(rng, tuple(length), int(batch_size), split)
        self.check_length(length)
        return self.generate(rng, int(length), int(batch_size), split)

    def check_length(self, length: int) -> None:
        if not is_int(length):
            raise self.fail(f"length must be an int, got {length!r}")
        if length < self.min_length:
            raise self.fail(
                f"length {length} is below this task's minimum {self.min_length}; "
                f"use length >= {self.min_length}"
            )

    def generate(self, rng: np.random.Generator, length: int, batch_size: int, split: str) -> Batch:
        """Draw a batch of one length (lengths already checked)."""
        raise NotImplementedError

    def decode(self, batch: Batch, i: int) -> dict[str, Any]:
        """The i-th example in the task's own terms, raw symbol values."""
        raise NotImplementedError

    def _sample_mixed(self, rng, bounds: tuple[int, int], batch_size: int, split: str) -> Batch:
        if len(bounds) != 2:
            raise self.fail(f"length range {bounds} must be a pair (min, max)")
        lo, hi = bounds
        self.check_length(lo)
        self.check_length(hi)
        if lo > hi:
            raise self.fail(f"length range {bounds} is empty; write (min, max)")
        lengths = rng.integers(lo, hi + 1, size=batch_size)
        parts = [
            (
                np.flatnonzero(lengths == n),
                self.generate(rng, int(n), int((lengths == n).sum()), split),
            )
            for n in np.unique(lengths)
        ]
        return merge(parts, batch_size, self.pad_id)


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def merge(parts: list[tuple[np.ndarray, Batch]], batch_size: int, pad_id: int) -> Batch:
    """Put batches of different lengths back into row order, right-padded."""
    width = max(b.tokens.shape[1] for _, b in parts)
    tokens = torch.full((batch_size, width), pad_id, dtype=torch.int64)  # (B, T)
    targets = torch.full((batch_size, width), IGNORE, dtype=torch.int64)  # (B, T)
    lengths = torch.zeros(batch_size, dtype=torch.int64)
    meta: dict[str, torch.Tensor] = {}
    for rows, b in parts:
        idx = torch.from_numpy(rows)
        tokens[idx, : b.tokens.shape[1]] = b.tokens
        targets[idx, : b.targets.shape[1]] = b.targets
        lengths[idx] = b.lengths
        for key, value in b.meta.items():
            if key not in meta:
                meta[key] = torch.zeros((batch_size, *value.shape[1:]), dtype=value.dtype)
            meta[key][idx] = value
    return Batch(tokens, targets, lengths, meta)


def as_batch(tokens: np.ndarray, targets: np.ndarray, length: int, **meta: np.ndarray) -> Batch:
    """Wrap numpy arrays of one source length into a Batch of int64 tensors."""
    n = tokens.shape[0]
    return Batch(
        torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)),
        torch.full((n,), length, dtype=torch.int64),
        {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in meta.items()},
    )


def seq2seq_arrays(src: np.ndarray, trg: np.ndarray, sp: Specials) -> tuple[np.ndarray, np.ndarray]:
    """``[BOS] src [SEP] trg [EOS]`` and its targets: the SEP and target positions predict the
    next token (the target and EOS); everything else is ignored."""
    b, s = src.shape
    t = trg.shape[1]
    tokens = np.empty((b, s + t + 3), dtype=np.int64)  # (B, T)
    tokens[:, 0] = sp.bos
    tokens[:, 1 : s + 1] = src
    tokens[:, s + 1] = sp.sep
    tokens[:, s + 2 : s + t + 2] = trg
    tokens[:, s + t + 2] = sp.eos
    targets = np.full_like(tokens, IGNORE)  # (B, T)
    targets[:, s + 1 : s + t + 2] = tokens[:, s + 2 : s + t + 3]
    return tokens, targets


def seq2seq_parts(batch: Batch, i: int, sp: Specials) -> tuple[list[int], list[int]]:
    """The source and target ids of row i of a ``[BOS] src [SEP] trg [EOS]`` batch."""
    row = batch.tokens[i].tolist()
    sep = row.index(sp.sep)
    eos = row.index(sp.eos, sep)
    return row[1:sep], row[sep + 1 : eos]


def classification_parts(batch: Batch, i: int) -> tuple[list[int], list[int]]:
    """The source tokens and labels of row i of a token-classification batch, pad removed."""
    n = int(batch.lengths[i])
    return batch.tokens[i, :n].tolist(), batch.targets[i, :n].tolist()


def check(ok: bool, owner: str, message: str) -> None:
    """Raise a SpecError naming the owner unless ``ok``; for ``__post_init__`` checks."""
    if not ok:
        raise SpecError(f"{owner}: {message}")
