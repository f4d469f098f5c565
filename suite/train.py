"""Training one cell: (attention, task, seed) under a profile.

AdamW (0.9, 0.99, no weight decay), linear warmup then cosine decay to 0 (after a hold at the
peak rate where the profile asks for one), gradient clipping
at 1.0, bf16 autocast on CUDA, cross-entropy on the target tokens only. Training lengths are
drawn per row from the task's training range. Every ``val_every`` steps the model is validated
at ``val_multiple`` x the training length (the paper's out-of-distribution checkpoint
selection; of equal scores the later checkpoint); the best and the last checkpoints are kept,
and an interrupted cell resumes from its last checkpoint. On CPU a seed gives the same run bit
for bit on one machine (``suite.cpu`` pins what makes machines differ).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import tasks
from tasks.metrics import selection_score

from .data import Batches
from .evaluate import evaluate
from .model import Decoder, ModelConfig
from .profiles import Budget, Profile, Size
from .step import Stepper
from .version import __version__


def checkpoint_dir() -> Path:
    """Where ``train`` keeps a cell's checkpoints when given no folder: $SUITE_CHECKPOINT_DIR,
    else results/checkpoints (a sweep gives its store's, ``suite.attempts``)."""
    from . import settings

    return Path(settings.current().store.checkpoint_dir or Path("results") / "checkpoints")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class ForeignCheckpoint(RuntimeError):
    """A checkpoint in a cell's folder was written for another config."""


@dataclasses.dataclass(frozen=True)
class Cell:
    attention: str  # canonical spec
    task: str  # canonical spec
    seed: int
    profile: Profile
    device: str = "cpu"
    backend: str = "auto"
    #: the code identity (``suite.identity.code_identity``) as (key, value) pairs, fixed when
    #: the sweep is planned; empty: read from the code loaded in this process
    code: tuple[tuple[str, str], ...] = ()
    #: the settings that can change its result and differ from their defaults, as (name,
    #: value) pairs (``suite.settings.for_cell``): part of its config, and in effect wherever
    #: it is trained
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def size_budget(self) -> tuple[Size, Budget]:
        return self.profile.for_task(tasks.get(self.task).name)

    def code_identity(self) -> dict[str, str]:
        from .identity import code_identity

        return dict(self.code) or code_identity(self.attention, self.task)

    def config(self) -> dict[str, Any]:
        """Everything that determines the result (and so the config hash): names and numbers,
        and the code that computes them (``code.*``, see ``suite.identity``)."""
        size, budget = self.size_budget
        task = tasks.get(self.task)
        return {
            "attention": self.attention, "task": self.task, "task_version": task.version,
            "seed": self.seed, "profile": self.profile.name, "pe": self.profile.pe,
            **{f"model.{k}": v for k, v in dataclasses.asdict(size).items()},
            **{f"train.{k}": v for k, v in dataclasses.asdict(budget).items()},
            "suite_version": __version__, **self.code_identity(),
            **{f"setting.{name}": value for name, value in self.settings},
        }

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        said = "".join(f" | {name}={value}" for name, value in self.settings)
        return f"{self.attention} | {self.task} | seed {self.seed} | {self.profile.name}{said}"

    def eval_lengths(self) -> list[int]:
        _, budget = self.size_budget
        ladder = tasks.get(self.task).eval_lengths
        cap = budget.max_eval_length
        return [n for n in ladder if cap is None or n <= cap]


def build_model(cell: Cell) -> Decoder:
    size, _ = cell.size_budget
    task = tasks.get(cell.task)
    cfg = ModelConfig(vocab_size=task.vocab_size, pe=cell.profile.pe, attention=cell.attention,
                      backend=cell.backend, **dataclasses.asdict(size))
    return Decoder(cfg)


def lr_at(step: int, budget: Budget) -> float:
    """Linear warmup to 1, held at 1 for ``hold`` of the remaining steps, then cosine to 0 (a
    multiplier of the peak learning rate)."""
    if step < budget.warmup:
        return (step + 1) / budget.warmup
    start = budget.warmup + int(budget.hold * (budget.steps - budget.warmup))
    if step < start:
        return 1.0
    progress = (step - start) / max(1, budget.steps - start)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _load(path: Path, cell: Cell, device: torch.device) -> dict:
    """A checkpoint of this cell (its config hash is inside), never another config's."""
    state = torch.load(path, map_location=device, weights_only=False)
    if state.get("config_hash") != cell.config_hash:
        raise ForeignCheckpoint(
            f"{path} was written for config {state.get('config_hash') or '(unrecorded)'}, not "
            f"{cell.config_hash} ({cell.name}); a cell resumes only from its own checkpoints: "
            "remove that folder")
    return state


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint


#: steps between reads of the training loss (and its NaN check) on the host
LOG_EVERY = 10


def train(cell: Cell, log=None, progress: bool = True, ckpt_dir: Path | None = None
          ) -> tuple[Decoder, dict]:
    """Train (or resume) a cell; returns the selected model and a summary. ``ckpt_dir``: the
    cell's checkpoint folder (a sweep passes its store's, ``suite.attempts``); default
    ``checkpoint_dir() / config hash``.

    The checkpoint keeps what was logged up to its step (training loss, learning rate,
    throughput, validation), and a resumed cell logs it again first, so that its run holds
    the whole history from step 0; with the running loss average kept too, its final numbers
    are those of an uninterrupted run."""
    size, budget = cell.size_budget
    task = tasks.get(cell.task)
    device = torch.device(cell.device)
    torch.manual_seed(cell.seed)
    model = build_model(cell).to(device)
    stepper = Stepper(model, budget.lr, device)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else checkpoint_dir() / cell.config_hash
    start, best, loss_ema = 0, {"score": -1.0, "step": -1}, None
    history: list[tuple[int, dict[str, float], int]] = []  # (step, values, time in ms)
    last = ckpt_dir / "last.pt"
    if last.exists():
        state = _load(last, cell, device)
        model.load_state_dict(state["model"])
        stepper.opt.load_state_dict(state["opt"])
        start, best, loss_ema = state["step"], state["best"], state.get("loss_ema")
        history = list(state.get("history", []))
        if log is not None:
            for at, values, ms in history:
                log.metrics(values, step=at, timestamp=ms)

    def record(values: dict[str, float], step: int) -> None:
        history.append((step, {k: float(v) for k, v in values.items()},
                        int(time.time() * 1000)))
        if log is not None:
            log.metrics(values, step=step)
    val_len = task.train_length * budget.val_multiple
    bar = tqdm(total=budget.steps, initial=start, disable=not progress, desc=cell.name,
               unit="step", dynamic_ncols=True, leave=False)
    t0, tokens_seen, read = time.perf_counter(), 0, start
    with Batches(task, cell.seed, budget.batch_size, start, budget.steps, device) as data:
        for step, tokens, targets in data:
            stepper.set_lr(budget.lr * lr_at(step, budget))
            stepper.step(tokens, targets)
            tokens_seen += int(tokens.numel())
            done = step + 1
            bar.update(1)
            due_log = done % LOG_EVERY == 0 or done == budget.steps
            due_val = done % budget.val_every == 0 or done == budget.steps
            due_ckpt = done % budget.ckpt_every == 0 or done == budget.steps
            if not (due_log or due_val or due_ckpt):
                continue
            for at, value in zip(range(read, done), stepper.flush()):  # one host sync
                if not math.isfinite(value):
                    raise NonFiniteLoss(
                        f"{cell.name}: loss is {value} at step {at}; lower the learning rate "
                        f"(now {budget.lr}) or check the attention for NaN"
                    )
                loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
            read = done
            if due_log:
                tps = tokens_seen / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_ema:.3f}", tok_s=f"{tps:,.0f}")
                record({"train_loss": loss_ema, "tokens_per_s": tps,
                        "lr": budget.lr * lr_at(step, budget)}, done)
            if due_val:
                val = evaluate(model, task, [val_len], budget.val_samples, cell.seed, device,
                               budget.eval_tokens, diagnostics=False, purpose=1)[val_len]
                score = _val_score(val)
                record({f"val_{k}": v for k, v in val.items()}, done)
                # ties go to the later checkpoint: once validation saturates (exact match 100%
                # at 8x on flip-flop), the earliest of equal scores is the model just out of
                # its loss plateau, and which checkpoint reaches the top first then hangs on
                # the last bits of the arithmetic (another machine, another pick)
                if score >= best["score"]:
                    best = {"score": score, "step": done}
                    _save(ckpt_dir / "best.pt", {"model": model.state_dict(), "step": done,
                                                 "config_hash": cell.config_hash})
            if due_ckpt:
                _save(last, {"model": model.state_dict(), "opt": stepper.opt.state_dict(),
                             "step": done, "best": best, "loss_ema": loss_ema,
                             "history": history, "config_hash": cell.config_hash})
    bar.close()
    elapsed = time.perf_counter() - t0
    summary = {"steps": budget.steps, "resumed_from": start, "best_step": best["step"],
               "best_val": best["score"], "train_seconds": elapsed,
               "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "final_loss": loss_ema,
               "cuda_graphs": stepper.captured}
    if (ckpt_dir / "best.pt").exists():
        model.load_state_dict(_load(ckpt_dir / "best.pt", cell, device)["model"])
    return model, summary


def _val_score(val: dict) -> float:
    """Higher is better: the task's headline metric, token accuracy breaking ties (the metric
    table's ``selection_score``)."""
    return selection_score(val)
