"""Training throughput: ``suite bench --train``.

Per (task, attention), one cell's real training step: the model and batch size of the profile
(``paper`` on CUDA, ``quick`` on CPU by default), its data workers, and the step the trainer
runs (on CUDA the captured CUDA graph). ``warmup`` steps first (compilation, capture, the first
batches: excluded), then ``steps`` timed steps with the data included and the loss read every
few steps as the trainer reads it; validation is not part of it.

A row holds tokens/s and steps/s (tokens = batch x padded width, what the step computes on),
the parameter count, the model's arithmetic rate by the 6 x params x tokens rule and its share
of the device's peak (on CUDA a bf16 8192^3 matrix product, on CPU a float32 2048^3 one, both
timed in the same run), and the ratio of tokens/s to softmax's on the same task in the same
run (softmax on its own fastest path: SDPA without a bias, FlexAttention with ALiBi). Each row
names the backend that ran the model's attention (``backend``, resolved as the training calls
resolve it). ``--backend NAME`` times the attentions on that backend instead of ``auto``; the
softmax baseline stays on ``auto`` (a row of its own), so that, e.g., softmax under NAPE on the
torch backend (SDPA with a dense bias) is timed beside its FlexAttention path in one run.

Packing: ``--cells 1,2,4`` runs N processes training the same cell on one device at once and
reports their aggregate tokens/s for each N (total tokens over the common wall time), and the
N that maximizes it.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import statistics
import time

import torch

import tasks

from .. import profiles as P
from .. import settings
from ..data import Batches
from ..run import kernel_backend
from ..step import Stepper
from ..train import LOG_EVERY, Cell, build_model, lr_at

BASELINE = "softmax"
TASKS = ("mqmtar", "sort")  # timed when no --task is given
ATTENTIONS = ("softmax", "entmax", "asentmax")  # timed when no --attention is given


def peak_tflops(device: torch.device) -> float:
    """The device's dense matrix-product rate, measured: bf16 8192^3 on CUDA (the rate the
    training step's matmuls run at), float32 2048^3 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(8):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def measure(task_spec: str, attention: str, profile: str, device: str, steps: int,
            warmup: int, seed: int = 0, barrier=None, backend: str = "auto") -> dict:
    """Time one cell's training step; returns a row."""
    cell = Cell(attention, tasks.get(task_spec).spec, seed, P.get(profile), device, backend)
    _, budget = cell.size_budget
    dev = torch.device(device)
    task = tasks.get(cell.task)
    torch.manual_seed(seed)
    model = build_model(cell).to(dev)
    stepper = Stepper(model, budget.lr, dev)
    row = {"task": cell.task, "attention": cell.attention, "profile": profile,
           "device": device, "requested_backend": backend, "backend": kernel_backend(cell, model),
           "batch_size": budget.batch_size,
           "n_params": sum(p.numel() for p in model.parameters())}
    tokens = 0
    with Batches(task, seed, budget.batch_size, 0, warmup + steps, dev) as data:
        batches = iter(data)

        def one(i):
            _, tok, tgt = next(batches)
            stepper.set_lr(budget.lr * lr_at(i, budget))
            stepper.step(tok, tgt)
            return int(tok.numel()), int(tok.shape[1])

        w0 = time.perf_counter()
        for i in range(warmup):
            one(i)
        stepper.flush()
        row["warmup_seconds"] = time.perf_counter() - w0
        if barrier is not None:
            barrier.wait()
        wall0, t0 = time.time(), time.perf_counter()
        losses = []
        for i in range(warmup, warmup + steps):
            n, width = one(i)
            tokens += n
            if (i + 1) % LOG_EVERY == 0:
                losses += stepper.flush()
        losses += stepper.flush()
        seconds = time.perf_counter() - t0
    bad = [x for x in losses if not x == x or abs(x) == float("inf")]
    row.update({"steps": steps, "width": width, "seconds": seconds, "tokens": tokens,
                "tokens_per_s": tokens / seconds, "steps_per_s": steps / seconds,
                "model_tflops": 6 * row["n_params"] * tokens / seconds / 1e12,
                "cuda_graphs": stepper.captured, "start": wall0, "end": wall0 + seconds,
                "nonfinite_losses": len(bad)})
    return row


def _child(args, backend, barrier, queue):
    try:
        torch.set_num_threads(1)
        queue.put(measure(*args, barrier=barrier, backend=backend))
    except Exception as err:  # reported by the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


def packed(task_spec: str, attention: str, profile: str, device: str, steps: int, warmup: int,
           n: int, backend: str = "auto") -> dict:
    """N processes training the same cell at once on one device: aggregate tokens/s."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_child, args=((task_spec, attention, profile, device, steps,
                                               warmup, seed), backend, barrier, queue))
             for seed in range(n)]
    for p in procs:
        p.start()
    rows = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        return {"task": task_spec, "attention": attention, "requested_backend": backend,
                "cells": n, "error": errors[0]}
    span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    total = sum(r["tokens"] for r in rows)
    return {"task": rows[0]["task"], "attention": rows[0]["attention"],
            "requested_backend": backend, "backend": rows[0]["backend"], "profile": profile,
            "device": device, "cells": n, "aggregate_tokens_per_s": total / span,
            "per_cell_tokens_per_s": [r["tokens_per_s"] for r in rows]}


def timed(attention_specs, backend: str = "auto") -> list[tuple[str, str]]:
    """The (attention, backend) pairs a table times: each attention on ``backend``, and the
    softmax baseline on ``auto`` first whatever else is asked for."""
    pairs = [(BASELINE, "auto")]
    for att in attention_specs:
        if (att, backend) not in pairs:
            pairs.append((att, backend))
    return pairs


def label(row: dict) -> str:
    """A row's attention, with the backend it was asked for when that is not ``auto``."""
    requested = row.get("requested_backend", "auto")
    return row["attention"] if requested == "auto" else f"{row['attention']}@{requested}"


def _is_baseline(row: dict) -> bool:
    return row["attention"] == BASELINE and row.get("requested_backend", "auto") == "auto"


def run(task_specs, attention_specs, profile: str | None, device: str, steps: int = 200,
        warmup: int = 20, cells=(1,), out: str | None = None, backend: str = "auto") -> dict:
    """The table: one row per (task, attention), and packing rows when ``cells`` has N > 1."""
    dev = torch.device(device)
    profile = profile or ("paper" if dev.type == "cuda" else "quick")
    peak = peak_tflops(dev)
    rows, packing = [], []
    env = {"device": torch.cuda.get_device_name() if dev.type == "cuda"
           else platform.processor() or "cpu", "torch": torch.__version__,
           "peak_tflops": peak, "profile": profile, "steps": steps, "warmup": warmup,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), **settings.git_state()}  # the code timed
    result = {"kind": "train", "env": env, "rows": rows, "packing": packing}
    env["backend"] = backend
    for task_spec in task_specs:
        for att, be in timed(attention_specs, backend):
            try:
                row = measure(task_spec, att, profile, device, steps, warmup, backend=be)
            except Exception as err:
                row = {"task": tasks.get(task_spec).spec, "attention": att,
                       "requested_backend": be, "error": f"{type(err).__name__}: {err}"}
            row["peak_share"] = row.get("model_tflops", 0) / peak
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(result, out)
            for n in cells:
                if n > 1:
                    packing.append(packed(task_spec, att, profile, device, steps, warmup, n,
                                          backend=be))
                    print(json.dumps(packing[-1]), flush=True)
                    _write(result, out)
    for row in rows:
        base = next((r.get("tokens_per_s") for r in rows if r["task"] == row["task"]
                     and _is_baseline(r)), None)
        row["ratio_to_softmax"] = (row["tokens_per_s"] / base
                                   if base and row.get("tokens_per_s") else None)
    for row in packing:
        single = next((r.get("tokens_per_s") for r in rows if r["task"] == row["task"]
                       and label(r) == label(row)), None)
        row["vs_one_cell"] = (row["aggregate_tokens_per_s"] / single
                              if single and "aggregate_tokens_per_s" in row else None)
    _write(result, out)
    return result


def _write(result: dict, path: str | None) -> None:
    """Keep the table so far on disk (a long run that is cut short keeps its rows)."""
    if path:
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)


def best_packing(packing: list[dict]) -> dict[tuple[str, str], int]:
    """(task, attention label) -> the number of cells per device with the largest aggregate."""
    out: dict = {}
    for r in packing:
        key = (r["task"], label(r))
        if "aggregate_tokens_per_s" in r and (key not in out or r["aggregate_tokens_per_s"]
                                              > out[key][1]):
            out[key] = (r["cells"], r["aggregate_tokens_per_s"])
    return {k: v[0] for k, v in out.items()}


def format_table(result: dict) -> str:
    env = result["env"]
    lines = [f"training throughput: {env['device']}, profile {env['profile']}, "
             f"{env['steps']} steps after {env['warmup']}, peak {env['peak_tflops']:.3g} "
             f"TFLOP/s (measured matmul), baseline {BASELINE} on its own fastest path (auto)",
             f"{'task':10s} {'attention':22s} {'backend':8s} {'tokens/s':>11s} {'steps/s':>8s} "
             f"{'params':>8s} {'TFLOP/s':>8s} {'of peak':>8s} {'x softmax':>9s} graphs"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['task']:10s} {label(r):22s} FAILED: {r['error'][:90]}")
            continue
        ratio = r.get("ratio_to_softmax")
        lines.append(f"{r['task']:10s} {label(r):22s} {r.get('backend', '?'):8s} "
                     f"{r['tokens_per_s']:11,.0f} "
                     f"{r['steps_per_s']:8.1f} {r['n_params'] / 1e6:7.2f}M "
                     f"{r['model_tflops']:8.1f} {100 * r['peak_share']:7.1f}% "
                     f"{'-' if ratio is None else format(ratio, '.2f'):>9s} {r['cuda_graphs']}")
    if result.get("packing"):
        lines.append("packing (N cells of the same kind on one device):")
        for r in result["packing"]:
            if "error" in r:
                lines.append(f"  {r['task']} {label(r)} x{r['cells']}: {r['error']}")
                continue
            lines.append(f"  {r['task']:10s} {label(r):22s} x{r['cells']}: aggregate "
                         f"{r['aggregate_tokens_per_s']:,.0f} tokens/s "
                         f"({r['vs_one_cell']:.2f}x one cell)")
        for (task, att), n in best_packing(result["packing"]).items():
            lines.append(f"  best N for {task} {att}: {n}")
    return "\n".join(lines)


def long_rows(result: dict) -> list[dict]:
    """Rows for the store: one per (task, attention), keyed like `suite bench`'s."""
    out = []
    for r in result["rows"]:
        if "error" in r:
            continue
        out.append({"impl": f"train.{r['task']}.{label(r)}", "T": int(r["width"]),
                    "backend": r.get("backend"),
                    "pass": "train_step", "median_ms": 1e3 * r["seconds"] / r["steps"],
                    "tokens_per_s": r["tokens_per_s"], "steps_per_s": r["steps_per_s"],
                    "model_tflops": r["model_tflops"], "peak_share": r["peak_share"],
                    "ratio_to_softmax": r.get("ratio_to_softmax"),
                    "device": result["env"]["device"], "n_params": r["n_params"]})
    return out
