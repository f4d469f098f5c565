"""Training one cell: (attention, task, seed) under a profile.

AdamW (0.9, 0.99, no weight decay), linear warmup then cosine decay to 0, gradient clipping
at 1.0, bf16 autocast on CUDA, cross-entropy on the target tokens only. Training lengths are
drawn per row from the task's training range. Every ``val_every`` steps the model is validated
at ``val_multiple`` x the training length (the paper's out-of-distribution checkpoint
selection); the best and the last checkpoints are kept, and an interrupted cell resumes from
its last checkpoint. On CPU a seed gives the same run bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

import tasks
from tasks.metrics import selection_score

from . import __version__
from .evaluate import evaluate
from .model import Decoder, ModelConfig
from .profiles import Budget, Profile, Size


def checkpoint_dir() -> Path:
    """Where cells keep their checkpoints: $SUITE_CHECKPOINT_DIR, else results/checkpoints."""
    return Path(os.environ.get("SUITE_CHECKPOINT_DIR") or Path("results") / "checkpoints")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Cell:
    attention: str  # canonical spec
    task: str  # canonical spec
    seed: int
    profile: Profile
    device: str = "cpu"
    backend: str = "auto"

    @property
    def size_budget(self) -> tuple[Size, Budget]:
        return self.profile.for_task(tasks.get(self.task).name)

    def config(self) -> dict[str, Any]:
        """Everything that determines the result (and so the config hash)."""
        size, budget = self.size_budget
        task = tasks.get(self.task)
        return {
            "attention": self.attention, "task": self.task, "task_version": task.version,
            "seed": self.seed, "profile": self.profile.name, "pe": self.profile.pe,
            **{f"model.{k}": v for k, v in dataclasses.asdict(size).items()},
            **{f"train.{k}": v for k, v in dataclasses.asdict(budget).items()},
            "suite_version": __version__,
        }

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"{self.attention} | {self.task} | seed {self.seed} | {self.profile.name}"

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
    """Linear warmup to 1, then cosine to 0 (a multiplier of the peak learning rate)."""
    if step < budget.warmup:
        return (step + 1) / budget.warmup
    progress = (step - budget.warmup) / max(1, budget.steps - budget.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint


def train(cell: Cell, log=None, progress: bool = True) -> tuple[Decoder, dict]:
    """Train (or resume) a cell; returns the selected model and a summary."""
    size, budget = cell.size_budget
    task = tasks.get(cell.task)
    device = torch.device(cell.device)
    torch.manual_seed(cell.seed)
    model = build_model(cell).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, betas=(0.9, 0.99),
                            weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, budget))
    rng = task.rng(cell.seed, "train")
    ckpt_dir = checkpoint_dir() / cell.config_hash
    start, best = 0, {"score": -1.0, "step": -1}
    last = ckpt_dir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, best = state["step"], state["best"]
    val_len = task.train_length * budget.val_multiple
    amp = device.type == "cuda"
    bar = tqdm(range(start, budget.steps), initial=start, total=budget.steps, disable=not progress,
               desc=cell.name, unit="step", dynamic_ncols=True, leave=False)
    t0, tokens_seen, loss_ema = time.perf_counter(), 0, None
    for step in bar:
        batch = task.sample(rng, task.train_lengths, budget.batch_size)
        tokens, targets = batch.tokens.to(device), batch.targets.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(tokens)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"{cell.name}: loss is {loss.item()} at step {step}; lower the learning rate "
                f"(now {budget.lr}) or check the attention for NaN"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens_seen += int(tokens.numel())
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        done = step + 1
        if done % 10 == 0 or done == budget.steps:
            tps = tokens_seen / max(1e-9, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_ema:.3f}", tok_s=f"{tps:,.0f}")
            if log is not None:
                log.metrics({"train_loss": loss_ema, "tokens_per_s": tps,
                             "lr": sched.get_last_lr()[0]}, step=done)
        if done % budget.val_every == 0 or done == budget.steps:
            val = evaluate(model, task, [val_len], budget.val_samples, cell.seed, device,
                           budget.eval_tokens, diagnostics=False, purpose=1)[val_len]
            score = _val_score(val)
            if log is not None:
                log.metrics({f"val_{k}": v for k, v in val.items()}, step=done)
            if score > best["score"]:
                best = {"score": score, "step": done}
                _save(ckpt_dir / "best.pt", {"model": model.state_dict(), "step": done})
        if done % budget.ckpt_every == 0 or done == budget.steps:
            _save(last, {"model": model.state_dict(), "opt": opt.state_dict(),
                         "sched": sched.state_dict(), "rng": rng.bit_generator.state,
                         "torch_rng": torch.get_rng_state(), "step": done, "best": best})
    bar.close()
    elapsed = time.perf_counter() - t0
    summary = {"steps": budget.steps, "resumed_from": start, "best_step": best["step"],
               "best_val": best["score"], "train_seconds": elapsed,
               "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "final_loss": loss_ema}
    if (ckpt_dir / "best.pt").exists():
        model.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location=device)["model"])
    return model, summary


def _val_score(val: dict) -> float:
    """Higher is better: the task's headline metric, token accuracy breaking ties (the metric
    table's ``selection_score``)."""
    return selection_score(val)
