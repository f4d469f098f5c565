"""Evaluation over a task's length ladder: teacher-forced metrics and attention diagnostics.

Exact match under teacher forcing (every scored target is the argmax) equals greedy-decoding
exact match at the cost of one forward pass. Batches hold about ``eval_tokens`` tokens, so
memory stays bounded at the longest lengths (batch 1 at 65,536 with the default budget).
The samples of a (task, seed, length) are the same for every attention.

Diagnostics (docs/paper.md, "What to measure"), on the scored query rows of the first batch
per length, per layer and head: normalized entropy H(p)/log n, support size |{p > 0}|, max
weight, mass on the target positions (tasks that know them), and the learned length scale
(variants that learn one).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .model import Decoder, Probe

PROBE_ROWS = 8


def eval_rng(task, seed: int, length: int, purpose: int = 0) -> np.random.Generator:
    """The generator of the (seed, length) evaluation set; purpose 1 is validation."""
    derived = int(np.random.SeedSequence([seed, length, purpose]).generate_state(1)[0])
    return task.rng(derived, "eval")


def _probe(batch, device) -> Probe | None:
    scored = batch.targets != -100  # (B, T)
    count = int(scored.sum(1).min())
    if count == 0:
        return None
    R = min(PROBE_ROWS, count)
    pos = torch.arange(scored.shape[1]).expand_as(scored)
    rows = torch.where(scored, pos, -1).topk(R, dim=1).values.sort(dim=1).values  # (B, R)
    targets = batch.meta.get("target_positions")
    if targets is not None:
        targets = targets.reshape(targets.shape[0], -1)[:, None, :].expand(-1, R, -1)
    return Probe(rows=rows.to(device), targets=None if targets is None else targets.to(device))


def _summarize(stats: list[dict]) -> dict:
    """Per-layer, per-head lists and overall means of the probe statistics."""
    out: dict = {}
    for key in stats[0] if stats else ():
        layers = [s[key].float().cpu() for s in stats]  # one (H,) per layer
        out[key] = float(torch.cat(layers).mean())
        out[f"{key}_heads"] = [layer.tolist() for layer in layers]
    return out


@torch.no_grad()
def evaluate(model: Decoder, task, lengths: Iterable[int], samples: int, seed: int,
             device: torch.device, eval_tokens: int = 1 << 15, diagnostics: bool = True,
             purpose: int = 0, progress=None) -> dict[int, dict]:
    """{length: {metric: value, ..., "diagnostics": {...}}} over the ladder."""
    model.eval()
    results = {}
    amp = device.type == "cuda"
    for length in lengths:
        rng = eval_rng(task, seed, length, purpose)
        meter, done, diag, bs = task.meter(), 0, None, 1
        while done < samples:
            batch = task.sample(rng, length, min(bs, samples - done))
            bs = max(1, eval_tokens // batch.tokens.shape[1])
            probe = _probe(batch, device) if diagnostics and diag is None else None
            model.set_probe(probe)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(batch.tokens.to(device))
            model.set_probe(None)
            meter.update(logits, batch.targets.to(logits.device))  # gathers on the device
            if probe is not None:
                diag = _summarize(probe.stats)
            done += batch.batch_size
            if progress is not None:
                progress(length, done)
        res = meter.result()
        if diag is not None:
            res["diagnostics"] = diag
        results[length] = res
    model.train()
    return results
