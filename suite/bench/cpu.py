"""Kernel speed and memory benchmarks (``suite bench``): one table, all rows from one run.

Causal attention, float32, B=1, H=8, D=64, Gaussian q, k, v. Implementations:

- ``sdpa_softmax``: torch ``scaled_dot_product_attention`` (the baseline of every ratio);
- ``numba_softmax``, ``numba_entmax15``, ``numba_entmax125``: the numba backend;
- ``entmax_pkg_entmax15``: the public path, ``entmax.entmax15`` over the materialized
  (B, H, T, T) scores, run only up to ``PKG_MAX_T`` (it needs T x T memory per head).

Passes: ``fwd`` (inputs without grad) and ``fwd+bwd`` (forward, then backward of a fixed
random cotangent). ``median_ms`` is the median over ``repeats`` timed calls after one warm-up
call; a cell whose warm-up took longer than ``SLOW_S`` keeps that call as its only sample.
``ratio_to_sdpa`` divides by sdpa's median of the same (T, pass). ``cpu_ms`` is the median
process CPU time of the same calls (all threads): on a shared machine it moves less than wall
time. ``peak_extra_mib`` is the
resident-memory high-water mark of one call above the resident memory before it, measured in
a fresh process whose glibc returns every freed block of 64 KiB or more to the system
(``MALLOC_MMAP_THRESHOLD_``), so that reused allocator caches cannot hide memory.

The last row, ``numba_entmax15`` / ``first call``, is a new process's first attention call
(T = 256) with the numba cache warm: what a training or evaluation job pays at start.
Threads: torch's (``torch.get_num_threads()``, default all cores); the numba backend runs its
kernels on that many threads of its own. ``common.format_table`` renders the rows.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import format_table

B, H, D = 1, 8, 64
LENGTHS = (1024, 4096, 16384)
PKG_MAX_T = 4096
SLOW_S = 4.0
IMPLS = ("sdpa_softmax", "numba_softmax", "numba_entmax15", "numba_entmax125",
         "entmax_pkg_entmax15")
PASSES = ("fwd", "fwd+bwd")
ROOT = Path(__file__).resolve().parents[2]


def implementation(name: str):
    """fn(q, k, v) -> (B, H, T, D) for one of ``IMPLS``, causal."""
    if name == "sdpa_softmax":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if name.startswith("numba_"):
        from attentions.backends import numba_backend
        from attentions.normalizer import Normalizer

        norm = {"numba_softmax": Normalizer("softmax"),
                "numba_entmax15": Normalizer("entmax", alpha=1.5),
                "numba_entmax125": Normalizer("entmax", alpha=1.25)}[name]
        return lambda q, k, v: numba_backend.attention(q, k, v, norm=norm, causal=True)
    if name == "entmax_pkg_entmax15":
        import entmax

        def dense(q, k, v):
            T, S = q.shape[2], k.shape[2]
            z = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
            mask = torch.ones(T, S, dtype=torch.bool).triu(S - T + 1)
            z = z.masked_fill(mask, float("-inf"))  # (B, H, T, S)
            return torch.matmul(entmax.entmax15(z, dim=-1), v)

        return dense
    raise ValueError(f"unknown implementation {name!r}; known: {', '.join(IMPLS)}")


def applies(name: str, T: int) -> bool:
    if name == "entmax_pkg_entmax15":
        try:
            import entmax  # noqa: F401
        except ImportError:
            return False
        return T <= PKG_MAX_T
    return True


def inputs(T: int, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device) for _ in range(3))
    dout = torch.randn(B, H, T, D, generator=g).to(device)
    return q, k, v, dout


def call(fn, q, k, v, dout, pass_: str):
    """One timed unit: the forward, or the forward and backward."""
    if pass_ == "fwd":
        with torch.no_grad():
            fn(q, k, v)
        return
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    fn(qg, kg, vg).backward(dout)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_cell(fn, q, k, v, dout, pass_, repeats, device="cpu") -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each timed call (see the module docstring for the
    warm-up rule)."""

    def once():
        t, c = time.perf_counter(), time.process_time()
        call(fn, q, k, v, dout, pass_)
        _sync(device)
        return time.perf_counter() - t, time.process_time() - c

    first = once()
    if first[0] > SLOW_S:
        return [first]
    return [once() for _ in range(repeats)]


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _memory_probe(cells, device) -> dict:
    """Inside the fresh process: peak extra MiB of one call per (impl, T, pass)."""
    import gc

    res = {}
    warm = inputs(64, device)
    for name in dict.fromkeys(c[0] for c in cells):
        for p in PASSES:  # load kernels (numba cache) before any measurement
            call(implementation(name), *warm, p)
    for name, T, p in cells:
        fn = implementation(name)
        q, k, v, dout = inputs(T, device)
        gc.collect()
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets the VmHWM high-water mark
        call(fn, q, k, v, dout, p)
        res[f"{name}|{T}|{p}"] = max(0, _status_kib("VmHWM") - before) / 1024
        del q, k, v, dout
    return res


def _env(**extra):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def peak_extra_mib(cells, device="cpu") -> dict:
    """{(impl, T, pass): MiB} measured in one fresh process (None where it cannot be)."""
    if device != "cpu" or not Path("/proc/self/clear_refs").exists():
        return {c: None for c in cells}
    env = _env(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    arg = json.dumps([list(c) for c in cells])
    res = subprocess.run([sys.executable, "-m", "suite.bench.cpu", "--memory", arg, device],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{res.stderr[-2000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return {c: got.get(f"{c[0]}|{c[1]}|{c[2]}") for c in cells}


def first_call_ms(device="cpu") -> float:
    """A new process's first numba entmax attention call (T=256), numba cache warm."""
    code = (
        "import time, torch\n"
        "from suite.bench import cpu as bench\n"
        "fn = bench.implementation('numba_entmax15')\n"
        "q, k, v, _ = bench.inputs(256)\n"
        "t = time.perf_counter(); fn(q, k, v); print((time.perf_counter() - t) * 1e3)\n"
    )
    env = _env()
    for _ in range(2):  # the first run fills the cache if it is cold
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"first-call probe failed:\n{res.stderr[-2000:]}")
    return float(res.stdout.strip().splitlines()[-1])


def run(device: str = "cpu", lengths=LENGTHS, repeats: int = 3, impls=IMPLS,
        memory: bool = True, first_call: bool = True) -> list[dict]:
    """The benchmark table: one dict per (impl, T, pass) with impl, T, pass, median_ms,
    ratio_to_sdpa, peak_extra_mib (plus threads and device)."""
    lengths = tuple(lengths or LENGTHS)
    if device != "cpu":
        impls = tuple(i for i in impls if not i.startswith("numba_"))
    threads = torch.get_num_threads()
    cells = [(n, T, p) for T in lengths for n in impls if applies(n, T) for p in PASSES]
    warm = inputs(64, device)
    for name in dict.fromkeys(c[0] for c in cells):  # compile / load every kernel first
        for p in PASSES:
            call(implementation(name), *warm, p)
    rows = []
    for T in lengths:
        q, k, v, dout = inputs(T, device)
        for name, t_, p in cells:
            if t_ != T:
                continue
            s = time_cell(implementation(name), q, k, v, dout, p, repeats, device)
            rows.append({"impl": name, "T": T, "pass": p,
                         "median_ms": statistics.median(w for w, _ in s) * 1e3,
                         "cpu_ms": statistics.median(c for _, c in s) * 1e3,
                         "samples": len(s)})
    base = {(r["T"], r["pass"]): r["median_ms"] for r in rows if r["impl"] == "sdpa_softmax"}
    mem = peak_extra_mib(cells, device) if memory else {}
    for r in rows:
        b = base.get((r["T"], r["pass"]))
        r["ratio_to_sdpa"] = r["median_ms"] / b if b else None
        r["peak_extra_mib"] = mem.get((r["impl"], r["T"], r["pass"]))
        r.update(threads=threads, device=device, dtype="float32", B=B, H=H, D=D)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for r in rows:
        r["load_avg"] = load  # other work on the machine inflates wall times
    if first_call and device == "cpu" and "numba_entmax15" in impls:
        rows.append({"impl": "numba_entmax15", "T": 256, "pass": "first call",
                     "median_ms": first_call_ms(device), "cpu_ms": None, "samples": 1,
                     "ratio_to_sdpa": None,
                     "peak_extra_mib": None, "threads": threads, "device": device,
                     "dtype": "float32", "B": B, "H": H, "D": D, "load_avg": load})
    return rows


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--memory":
        cells = [tuple(c) for c in json.loads(sys.argv[2])]
        print(json.dumps(_memory_probe(cells, sys.argv[3] if len(sys.argv) > 3 else "cpu")))
    else:
        print(format_table(run(lengths=[int(a) for a in sys.argv[1:]] or LENGTHS)))
