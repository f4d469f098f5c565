"""Time and peak memory of one attention forward at long T (the evaluation pass), beside SDPA.

    python -m suite.bench.longforward --T 65536 --H 16 --D 64 --specs entmax softmax

Gaussian q, k, v (as in docs/peers.md), causal. Times are medians of CUDA-event timings after a
warm-up; peak memory is ``torch.cuda.max_memory_allocated`` over the call, minus what the
inputs already held. On CPU the host clock and no memory figure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import attentions
from attentions.backends import resolve

from .common import peak_gib


def _time(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up (and compilation, where a backend compiles)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(spec: str, T: int, B=1, H=16, D=64, dtype=torch.bfloat16, device="cuda",
            backend="auto", reps=3) -> dict:
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g, device=device, dtype=dtype) for _ in "qkv")
    if spec == "sdpa":
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        backend_used = "sdpa"
    else:
        attn = attentions.build(spec, n_heads=H, head_dim=D, backend=backend).to(device)
        x = torch.randn(B, T, attn.d_model, device=device, dtype=dtype)
        fn = lambda: attn(q, k, v, x=x, causal=True)
        backend_used = resolve(backend, attn.normalizer(), device).NAME
    with torch.no_grad():
        ms = _time(fn, reps, device)
        peak = peak_gib(fn, device)
        out = fn()
    assert torch.isfinite(out).all(), f"{spec}: non-finite output"
    return {"impl": spec, "backend": backend_used, "T": T, "B": B, "H": H, "D": D,
            "dtype": str(dtype).removeprefix("torch."), "ms": ms, "peak_gib": peak,
            "inputs_gib": 3 * q.numel() * q.element_size() / 2**30}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[65536])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--specs", nargs="+", default=["sdpa", "softmax", "entmax"])
    p.add_argument("--backend", default="auto")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    rows = []
    for T in a.T:
        for spec in a.specs:
            r = measure(spec, T, a.B, a.H, a.D, dtype, a.device, a.backend, a.reps)
            rows.append(r)
            base = next((x["ms"] for x in rows if x["impl"] == "sdpa" and x["T"] == T), None)
            ratio = f"{r['ms'] / base:8.2f}x" if base else "        -"
            peak = f"{r['peak_gib']:.3f}" if r["peak_gib"] is not None else "-"
            print(f"{r['impl']:<22} backend={r['backend']:<6} T={T:<6} B={a.B} H={a.H} D={a.D} "
                  f"{r['dtype']:<9} {r['ms']:10.2f} ms {ratio} vs sdpa  peak {peak} GiB "
                  f"(inputs {r['inputs_gib']:.3f} GiB)", flush=True)
    if a.device == "cuda":
        print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
