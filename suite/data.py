"""Training batches, made ahead of the step that needs them.

The batch of training step s is drawn from its own generator, ``task.rng(seed, "train", s)``,
so it is a function of (task, seed, step) alone: any number of worker processes can draw steps
in any order, a resumed cell draws exactly the batches an uninterrupted one would, and no
generator state travels in checkpoints.

On CUDA the batches come from worker processes (``SUITE_DATA_WORKERS``, default 3) a few steps
ahead, are right-padded to a fixed width (pad token, target -100: under causal attention the
padding changes no logit and no loss term), copied into a small ring of pinned host buffers and
handed over for an asynchronous copy to the device. A fixed width gives the training step one
shape, which it compiles and captures once. On CPU the batches are drawn inline, unpadded (the
step costs more than the data there, and the numbers stay those of the unpadded batch).
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import tasks

#: steps drawn ahead per worker
AHEAD = 4


def draw(task, seed: int, step: int, batch_size: int):
    """The batch of training step ``step``: the task's training lengths, one generator per step."""
    return task.sample(task.rng(seed, "train", step), task.train_lengths, batch_size)


def max_width(task, probes: int = 4) -> int:
    """The widest sequence the task makes at its longest training length (a few draws, for
    layouts whose width varies with the content)."""
    hi = task.train_lengths[1]
    rng = task.rng(0, "eval")
    return max(int(task.sample(rng, hi, 8).tokens.shape[1]) for _ in range(probes))


def default_workers(device: torch.device) -> int:
    from . import settings

    workers = settings.current().step.data_workers
    if workers is not None:
        return workers
    return 3 if device.type == "cuda" else 0


def plugin_targets(task) -> list[str]:
    """The plugin file or module a worker process must import to know the task, if any."""
    mod = type(task).__module__ or ""
    if mod.split(".")[0] in ("tasks", "suite", "attentions") or mod == "__main__":
        return []
    module = sys.modules.get(mod)
    path = getattr(module, "__file__", None)
    if mod.startswith("suite_plugin_") and path:
        return [str(Path(path).resolve())]
    return [mod]


# ---------------------------------------------------------------- worker processes

_TASKS: dict = {}


def _init_worker(plugins: list[str]) -> None:
    torch.set_num_threads(1)
    for target in plugins:
        tasks.load_plugin(target)


def _make(spec: str, seed: int, step: int, batch_size: int):
    task = _TASKS.get(spec) or _TASKS.setdefault(spec, tasks.get(spec))
    batch = draw(task, seed, step, batch_size)
    return batch.tokens.numpy(), batch.targets.numpy()


class Batches:
    """(tokens, targets) of the steps ``start .. stop - 1``, in order. Inline, they are the
    task's batches; with workers, int64 CPU tensors padded to ``width`` (wider batches widen
    it), in pinned memory on CUDA. Call ``close()`` (or use ``with``) to stop the workers."""

    def __init__(self, task, seed: int, batch_size: int, start: int, stop: int,
                 device: torch.device, workers: int | None = None, pad: bool | None = None):
        self.task, self.seed, self.batch_size = task, seed, batch_size
        self.start, self.stop, self.device = start, stop, torch.device(device)
        self.workers = default_workers(self.device) if workers is None else workers
        self.pad = (self.device.type == "cuda") if pad is None else pad
        self.width = max_width(task) if self.pad else None
        self.pin = self.device.type == "cuda"
        self._pool = None
        self._ring: dict[int, list] = {}
        self._slot = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def _start_pool(self):
        ctx = multiprocessing.get_context("spawn")
        # Ctrl-C reaches the whole process group; the parent stops the pool (``close``). The
        # workers start with SIGINT ignored (kept across their exec), else one hit while
        # importing or waiting prints a traceback and leaves the pool short of workers.
        try:
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread: signals are the main thread's business
            old = None
        try:
            self._pool = ctx.Pool(self.workers, initializer=_init_worker,
                                  initargs=(plugin_targets(self.task),))
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def _padded(self, tokens: np.ndarray, targets: np.ndarray):
        width = max(self.width or 0, tokens.shape[1])
        self.width = width
        ring = self._ring.setdefault(width, [])
        if len(ring) < AHEAD:  # buffers (tokens, targets, event) reused round-robin
            shape = (self.batch_size, width)
            ring.append((torch.empty(shape, dtype=torch.int64, pin_memory=self.pin),
                         torch.empty(shape, dtype=torch.int64, pin_memory=self.pin), None))
            slot = len(ring) - 1
        else:
            slot = self._slot % len(ring)
            self._slot += 1
        tok, tgt, event = ring[slot]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer is done
        n = tokens.shape[1]
        tok[:, :n] = torch.from_numpy(tokens)
        tgt[:, :n] = torch.from_numpy(targets)
        if n < width:
            tok[:, n:] = self.task.pad_id
            tgt[:, n:] = tasks.IGNORE
        return tok, tgt, ring, slot

    def _after_copy(self, ring, slot) -> None:
        """Mark that the device copy of a ring buffer has been enqueued."""
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            tok, tgt, _ = ring[slot]
            ring[slot] = (tok, tgt, event)

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.workers <= 0:
            for step in range(self.start, self.stop):
                batch = draw(self.task, self.seed, step, self.batch_size)
                yield batch.tokens.numpy(), batch.targets.numpy()
            return
        self._start_pool()
        spec = self.task.spec
        pending: collections.deque = collections.deque()
        nxt = self.start
        for _ in range(self.start, self.stop):
            while nxt < self.stop and len(pending) < AHEAD * self.workers:
                pending.append(self._pool.apply_async(
                    _make, (spec, self.seed, nxt, self.batch_size)))
                nxt += 1
            yield pending.popleft().get()

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        try:
            for step, (tokens, targets) in zip(range(self.start, self.stop), self._batches()):
                if not self.pad:
                    yield step, torch.from_numpy(tokens), torch.from_numpy(targets)
                    continue
                tok, tgt, ring, slot = self._padded(tokens, targets)
                yield step, tok, tgt
                self._after_copy(ring, slot)
        finally:
            self.close()
