"""Profiles: model sizes and training budgets per task.

- ``smoke``: CI, seconds per cell; proves the pipeline, learns nothing.
- ``quick``: the default main job, sized for a 2-core CPU (minutes per cell). Small models,
  enough steps for the tasks that learn at this scale (flip_flop, see docs/calibration.md)
  to show the qualitative picture. Copy, sort, reverse and MQMTAR do not leave their loss
  plateau at this scale; they need the paper profile on a GPU.
- ``paper``: the per-task configs of docs/paper.md, "The paper profile" (official code, batch
  128; steps = one epoch over the official training-set size), for GPUs.
- ``repro``: the paper profile's models, batch and peak learning rates, cut to ``REPRO_STEPS``
  steps per cell (warmup a tenth of them, out-of-distribution validation every twentieth):
  the budget of the suite's reference runs on one GPU (results/published/). Each cell logs its
  validation exact match against steps, the learning curve from which this budget is judged.
- ``long``: the same models, batch and peak learning rates at ``LONG_STEPS`` steps (the
  paper's own count where that is fewer: flip_flop), warmup a tenth, validation every
  twentieth, a checkpoint every fiftieth (so that a cell cut by a time limit resumes from at
  most 2% back), 100 samples per evaluation length: the budget of the long MQMTAR reference
  runs, about 7 minutes of training per MQMTAR cell on one H200.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from attentions.spec import unknown


@dataclasses.dataclass(frozen=True)
class Size:
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    d_ff: int


@dataclasses.dataclass(frozen=True)
class Budget:
    steps: int
    warmup: int
    lr: float
    batch_size: int
    val_every: int  # steps between out-of-distribution validations (checkpoint selection)
    val_multiple: int = 8  # validation length = val_multiple x the training length
    val_samples: int = 64
    eval_samples: int = 100  # per evaluation length
    max_eval_length: int | None = None  # cap on the task's ladder (None: the whole ladder)
    eval_tokens: int = 1 << 15  # tokens per evaluation batch (batch = eval_tokens // length)
    ckpt_every: int = 500
    hold: float = 0.0  # share of the steps after warmup at the peak rate before the cosine decay


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one cell asks of a cluster (the Ray executor)."""

    num_cpus: float
    num_gpus: float = 0.0


#: a cell's resources on (cpu, cuda) where a profile does not say
RESOURCES = {"cpu": Resources(1), "cuda": Resources(1, 1.0)}


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    size: Size
    budget: Budget
    tasks: tuple[str, ...]  # what `suite run` trains when no --task is given
    per_task: Mapping[str, tuple[Size, Budget]] = dataclasses.field(default_factory=dict)
    pe: str = "nape"
    seeds: int = 1  # seeds per cell when `suite run` is given no --seeds
    resources: Mapping[str, Resources] = dataclasses.field(default_factory=lambda: RESOURCES)
    #: ``NAME=VALUE`` settings (``suite.settings``) this profile trains with, over the
    #: environment's and under ``suite run --set``; those that can change a result enter the
    #: cells' config hash
    settings: tuple[str, ...] = ()

    def for_task(self, task: str) -> tuple[Size, Budget]:
        return self.per_task.get(task, (self.size, self.budget))

    def with_budget(self, **changes) -> Profile:
        """The same profile with some budget fields replaced for every task (e.g. fewer steps
        on a GPU-time budget). The changed fields land in the config hash and the params."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        bad = [k for k in changes if k not in {f.name for f in dataclasses.fields(Budget)}]
        if bad:
            raise ValueError(f"unknown budget field(s) {bad}")
        if "steps" in changes:  # keep warmup and validation inside the shortened run
            changes.setdefault("warmup", None)
        def edit(b: Budget) -> Budget:
            new = {**changes}
            if "warmup" in new and new["warmup"] is None:
                new["warmup"] = min(b.warmup, max(1, new["steps"] // 10))
            if "steps" in new:
                new.setdefault("val_every", max(1, min(b.val_every, new["steps"] // 4)))
                new.setdefault("ckpt_every", max(1, min(b.ckpt_every, new["steps"] // 4)))
            return dataclasses.replace(b, **new)
        return dataclasses.replace(
            self, budget=edit(self.budget),
            per_task={k: (sz, edit(b)) for k, (sz, b) in self.per_task.items()})


_SMOKE = Profile(
    "smoke",
    Size(1, 32, 2, 16, 64),
    Budget(steps=12, warmup=3, lr=1e-3, batch_size=8, val_every=6, val_multiple=2,
           val_samples=4, eval_samples=8, max_eval_length=128, ckpt_every=6),
    tasks=("flip_flop",),
    resources={"cpu": Resources(1), "cuda": Resources(1, 0.125)},  # tiny models share a GPU
)

# validation (3 x 32 samples at 8x) and evaluation (50 samples per length) sized so that the
# 18 cells of the main job take under half of its 15 minutes on a 2-core machine
_Q = Budget(steps=1200, warmup=100, lr=1e-3, batch_size=16, val_every=400, val_multiple=8,
            val_samples=32, eval_samples=50, max_eval_length=1024, hold=0.7)
_QUICK = Profile(
    "quick",
    Size(2, 64, 4, 16, 128),
    _Q,
    tasks=("flip_flop",),
    per_task={
        "mqmtar": (Size(4, 64, 4, 16, 128), _Q),
        "lm": (Size(2, 64, 4, 16, 128), dataclasses.replace(_Q, max_eval_length=1024)),
    },
    seeds=3,
    resources={"cpu": Resources(1), "cuda": Resources(1, 0.25)},
)


def _paper(layers, d, heads, hd, ff, steps, warmup, lr, val_multiple, max_len=None):
    return (Size(layers, d, heads, hd, ff),
            Budget(steps=steps, warmup=warmup, lr=lr, batch_size=128, val_every=steps // 20,
                   val_multiple=val_multiple, val_samples=256, eval_samples=1000,
                   max_eval_length=max_len, eval_tokens=1 << 18, ckpt_every=2000))


_PAPER = Profile(
    "paper",
    *_paper(2, 256, 8, 32, 1024, 78_125, 10_000, 4e-4, 8),  # tasks without an official config
    tasks=("mqmtar", "sort", "reverse", "copy"),
    per_task={
        "copy": _paper(2, 256, 16, 16, 1024, 156_250, 20_000, 1e-3, 8),
        "reverse": _paper(6, 256, 8, 32, 1024, 234_375, 20_000, 4e-4, 8, 512),
        "sort": _paper(2, 256, 8, 32, 1024, 312_500, 20_000, 4e-4, 4, 512),
        "mqmtar": _paper(4, 512, 16, 32, 1024, 390_625, 20_000, 2e-4, 16),
        # head_dim is not set in the official flip-flop config and falls back to Gemma-2's 256
        "flip_flop": _paper(4, 256, 8, 256, 512, 78_125, 10_000, 4e-4, 8),
    },
    resources={"cpu": Resources(4), "cuda": Resources(2, 1.0)},
)

#: steps of a ``repro`` cell: on sort (paper steps 312,500) 6.4% of the paper's training
REPRO_STEPS = 20_000
#: steps of a ``long`` cell: on MQMTAR (paper steps 390,625) 25.6% of the paper's training
LONG_STEPS = 100_000


def _cut(size_budget: tuple[Size, Budget]) -> tuple[Size, Budget]:
    size, b = size_budget
    return size, dataclasses.replace(b, steps=REPRO_STEPS, warmup=REPRO_STEPS // 10,
                                     val_every=REPRO_STEPS // 20, ckpt_every=REPRO_STEPS // 10)


def _long(size_budget: tuple[Size, Budget]) -> tuple[Size, Budget]:
    size, b = size_budget
    steps = min(LONG_STEPS, b.steps)
    return size, dataclasses.replace(b, steps=steps, warmup=steps // 10, val_every=steps // 20,
                                     ckpt_every=steps // 50, eval_samples=100)


_REPRO = Profile(
    "repro",
    *_cut((_PAPER.size, _PAPER.budget)),
    tasks=("mqmtar", "sort"),
    per_task={task: _cut(sb) for task, sb in _PAPER.per_task.items()},
    seeds=3,
    resources=_PAPER.resources,
)

_LONG = Profile(
    "long",
    *_long((_PAPER.size, _PAPER.budget)),
    tasks=("mqmtar",),
    per_task={task: _long(sb) for task, sb in _PAPER.per_task.items()},
    seeds=3,
    resources=_PAPER.resources,
)

PROFILES = {p.name: p for p in (_SMOKE, _QUICK, _PAPER, _REPRO, _LONG)}


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise unknown("profile", name, PROFILES)
    return PROFILES[name]
