"""Evaluation over a task's length ladder: teacher-forced metrics and attention diagnostics.

Exact match under teacher forcing (every scored target is the argmax) equals greedy-decoding
exact match at the cost of one forward pass. Batches hold about ``eval_tokens`` tokens, so
memory stays bounded at the longest lengths (batch 1 at 65,536 with the default budget).
The samples of a (task, seed, length) are the same for every attention.

Diagnostics (docs/paper.md, "What to measure"), on up to PROBE_ROWS scored rows of each of the
first PROBE_SEQUENCES sequences per length, per layer and head: normalized entropy H(p)/log n,
support size |{p > 0}|, max weight, the mass on the positions that hold each row's answer
(``Task.answer_positions``, tasks that know them; mean over heads and the top head), and the
learned length scale (variants that learn one).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .model import Decoder, Probe

PROBE_ROWS = 8
#: sequences per length whose rows are inspected (the first ones of the evaluation set)
PROBE_SEQUENCES = 32


def eval_rng(task, seed: int, length: int, purpose: int = 0) -> np.random.Generator:
    """The generator of the (seed, length) evaluation set; purpose 1 is validation."""
    derived = int(np.random.SeedSequence([seed, length, purpose]).generate_state(1)[0])
    return task.rng(derived, "eval")


def _probe(task, batch, device, n: int) -> Probe | None:
    """The probe of the batch's first ``n`` sequences: up to PROBE_ROWS scored rows each, with
    the positions that hold each row's answer (``task.answer_positions``)."""
    scored = (batch.targets != -100)[:n]  # (n, T)
    count = int(scored.sum(1).min())
    if count == 0:
        return None
    R = min(PROBE_ROWS, count)
    pos = torch.arange(scored.shape[1]).expand_as(scored)
    rows = torch.where(scored, pos, -1).topk(R, dim=1).values.sort(dim=1).values  # (n, R)
    targets = task.answer_positions(batch, rows)  # (n, R, K) or None
    if targets is not None and not bool((targets >= 0).any()):
        targets = None  # no probed row needs a position: no target mass from this batch
    return Probe(rows=rows.to(device), targets=None if targets is None else targets.to(device))


def _summarize(parts: list[tuple[list[dict], int]]) -> dict:
    """Per-layer, per-head lists and overall means of the probe statistics, each probed batch
    weighted by its number of sequences (``parts``: (the probe's stats, sequences)); a
    statistic from the batches that have it. For the target mass also its largest per-head
    value (``target_mass_top``): the head that finds the answer, which the mean over every
    head of every layer dilutes."""
    out: dict = {}
    keys = dict.fromkeys(k for stats, _ in parts if stats for k in stats[0])
    for key in keys:
        have = [(stats, n) for stats, n in parts if stats and key in stats[0]]
        total = sum(n for _, n in have)
        layers = [sum(stats[layer][key].float().cpu() * n for stats, n in have) / total
                  for layer in range(len(have[0][0]))]  # one (H,) per layer
        out[key] = float(torch.cat(layers).mean())
        out[f"{key}_heads"] = [layer.tolist() for layer in layers]
        if key == "target_mass":
            out["target_mass_top"] = float(torch.cat(layers).max())
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
        meter, done, parts, probed, bs = task.meter(), 0, [], 0, 1
        while done < samples:
            batch = task.sample(rng, length, min(bs, samples - done))
            bs = max(1, eval_tokens // batch.tokens.shape[1])
            n = min(batch.batch_size, PROBE_SEQUENCES - probed) if diagnostics else 0
            probe = _probe(task, batch, device, n) if n > 0 else None
            model.set_probe(probe)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(batch.tokens.to(device))
            model.set_probe(None)
            meter.update(logits, batch.targets.to(logits.device))  # gathers on the device
            if probe is not None and probe.stats:
                parts.append((probe.stats, n))
            probed += n
            done += batch.batch_size
            if progress is not None:
                progress(length, done)
        res = meter.result()
        if parts:
            res["diagnostics"] = _summarize(parts)
        results[length] = res
    model.train()
    return results
