"""GPU benchmark of fused sparse attention against softmax: ``python -m suite.bench.cuda``.

One run times, on the current CUDA device, causal attention with bf16 Gaussian q, k, v,
B=2, H=16, D=64 (B=1 and forward only at T=65536):

- ``sdpa``: softmax ``scaled_dot_product_attention`` with its own backend choice (cuDNN
  attention on an H100/H200 with a recent torch): the fastest softmax the card has, the
  baseline of every ratio;
- ``sdpa_flash``: the same forced to the FLASH backend (an extra row);
- ``triton_entmax15``: our fused kernel (``attentions.backends.triton_backend``), alpha=1.5;
- with ``--extras``: ``flex_softmax_nape`` (softmax with NAPE's ALiBi slopes on half the heads,
  on its fused path, FlexAttention: the baseline of the NAPE rows), ``triton_entmax15_nape``
  (ours with those slopes) and generic alpha=1.25;
- ``adasplash_v2`` (niter=1) when ``adasplash`` imports (power-of-two T only, its restriction).

Cells: forward (inputs without grad) and forward+backward (forward then backward of a fixed
cotangent), medians of ``triton.testing.do_bench``; peak memory of one call (allocated bytes
above what the inputs hold); for ours, the relative error of the forward against the torch
backend in float32 on the first 2 heads (a check that the timed kernel computes the function).
Every cell catches its own failure and prints it, so one call gives the whole table.
``--sweep`` first times a few block configurations of our kernels (forward, dK/dV, dQ);
``--train-shapes`` times forward+backward at training shapes, eagerly and as CUDA-graph
replays (how the training step runs them); ``--train-sweep`` times block configurations of our
kernels there (``sweep_train_shapes``). ``--lengths ""`` leaves out the long-T table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from .common import peak_gib

H, D = 16, 64
LENGTHS = (1024, 4096, 16384, 65536)
FWD_ONLY_FROM = 65536
BASELINE = "sdpa"
#: rows whose ratio is taken against another baseline than ``BASELINE``
BASELINE_OF = {"triton_entmax15_nape": "flex_softmax_nape"}


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _sdpa_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _ours(alpha=1.5, alibi=False):
    from attentions.backends import triton_backend as TB
    from attentions.normalizer import Alibi, Normalizer, nape_slopes

    norm = Normalizer("entmax", alpha=alpha)
    bias = Alibi(nape_slopes(H).cuda()) if alibi else None

    def fn(q, k, v):
        return TB.attention(q, k, v, norm=norm, causal=True, bias=bias)

    fn.norm, fn.bias = norm, bias
    return fn


def _flex_nape():
    from attentions.backends import flex_backend
    from attentions.normalizer import Alibi, Normalizer, nape_slopes

    norm = Normalizer("softmax")
    bias = Alibi(nape_slopes(H).cuda())

    def fn(q, k, v):
        return flex_backend.attention(q, k, v, norm=norm, causal=True, bias=bias)

    fn.norm, fn.bias = norm, bias
    return fn


def _adasplash():
    from adasplash import adasplash_v2

    return lambda q, k, v: adasplash_v2(q, k, v, niter=1)


def implementations(extras: bool):
    out = {"sdpa": _sdpa, "sdpa_flash": _sdpa_flash, "triton_entmax15": _ours(1.5)}
    if extras:
        out["flex_softmax_nape"] = _flex_nape()
        out["triton_entmax15_nape"] = _ours(1.5, alibi=True)
        out["triton_entmax125"] = _ours(1.25)
    try:
        out["adasplash_v2"] = _adasplash()
    except Exception as err:  # optional peer
        print(f"# adasplash not available: {type(err).__name__}: {err}")
    return out


def _inputs(B, T, dtype, grad, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype, generator=g)
               for _ in range(3))
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _bench(fn, warmup=10, rep=50):
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _check(fn, T):
    """Relative error of our forward against the torch backend in float32 (2 heads)."""
    from attentions.backends import torch_backend

    Tc = min(T, 4096)
    q, k, v = _inputs(1, Tc, torch.bfloat16, False, seed=1)
    q, k, v = (t[:, :2].contiguous() for t in (q, k, v))
    y = fn(q, k, v).float()
    ref = torch_backend.attention(q.float(), k.float(), v.float(), norm=fn.norm, causal=True,
                                  bias=None if fn.bias is None else type(fn.bias)(
                                      fn.bias.slopes[:2]))
    return float((y - ref).norm() / ref.norm())


def _static_compile():
    """Forget earlier compilations, so that the next compiled call (FlexAttention) is
    specialised to its own shape, as a run at one length gets: after a first shape torch
    recompiles a function with dynamic shapes. On H200s FlexAttention so recompiled took 21.6 ms
    forward+backward at T=16384, and compiled for that length alone 13.3 ms (two runs)."""
    import torch._dynamo

    torch._dynamo.reset()


def measure(name, fn, T, do_bwd):
    B = 1 if T >= FWD_ONLY_FROM else 2
    row = {"impl": name, "T": T, "B": B, "H": H, "D": D, "dtype": "bf16"}
    if name.startswith("flex"):
        _static_compile()
    try:
        if name == "adasplash_v2" and T & (T - 1):
            raise RuntimeError("adasplash needs a power-of-two T")
        q, k, v = _inputs(B, T, torch.bfloat16, False)
        with torch.no_grad():
            fn(q, k, v)  # compile / autotune outside the timing
            row["fwd_ms"] = _bench(lambda: fn(q, k, v))
            row["fwd_peak_gib"] = peak_gib(lambda: fn(q, k, v))
        del q, k, v
        if do_bwd and T < FWD_ONLY_FROM:
            q, k, v = _inputs(B, T, torch.bfloat16, True)
            gen = torch.Generator(device="cuda").manual_seed(7)
            g = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=gen)

            def step():
                out = fn(q, k, v)
                out.backward(g)

            step()
            row["fwdbwd_ms"] = _bench(step)
            row["fwdbwd_peak_gib"] = peak_gib(step)
            del q, k, v, g
        if hasattr(fn, "norm"):
            row["rel_err_vs_torch_fp32"] = _check(fn, T)
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {err}"
        print(f"# {name} T={T} failed:\n{traceback.format_exc()}", file=sys.stderr)
    torch.cuda.empty_cache()
    return row


FWD_CFGS = ["128,64,4,3", "128,64,8,3", "128,64,8,2", "64,64,4,3", "64,64,4,2", "128,128,8,2",
            "64,128,4,2", "64,32,4,3"]
DKDV_CFGS = ["64,128,8,2", "64,64,4,2", "32,128,4,2", "64,128,8,3", "32,64,4,2", "64,64,4,3"]
DQ_CFGS = ["128,64,8,2", "64,64,4,2", "128,32,8,2", "64,32,4,2", "128,64,4,3", "64,64,4,3"]


def _blocks(kind: str, cfg: str) -> dict:
    """The knobs that set one kernel's blocks ('M,N,warps,stages'); a forward block set runs
    the tiled forward (the one-tile forward off)."""
    blocks = tuple(int(x) for x in cfg.split(","))
    extra = {"triton_one_tile": 0} if kind == "fwd" else {}
    return {f"triton_blocks_{kind}": blocks, **extra}


def _sweep_one(T):
    from attentions.backends import triton_backend as TB

    out = []
    fn = _ours(1.5)
    sm = 1 / math.sqrt(D)
    q, k, v = _inputs(2, T, torch.bfloat16, False)
    with torch.no_grad():
        for cfg in FWD_CFGS:
            ms = _with_knobs(_blocks("fwd", cfg), lambda: fn(q, k, v))
            out.append({"kernel": "fwd", "cfg": cfg, "T": T, "ms": ms})
            print(out[-1], flush=True)
        exact = not TB.delta_in_dq()  # the backward training runs: O2 kept, or delta in dQ
        o, o2, stats = TB.forward(q, k, v, 1.5, True, None, sm, need_o2=exact)
        kept = o2 if exact else o
        g = torch.randn_like(q)
        for kind, cfgs in (("dkdv", DKDV_CFGS), ("dq", DQ_CFGS)):
            for cfg in cfgs:
                ms = _with_knobs(_blocks(kind, cfg), lambda: TB.backward(
                    q, k, v, kept, stats, g, 1.5, True, None, sm, exact=exact))
                out.append({"kernel": f"bwd ({kind} varied)", "cfg": cfg, "T": T, "ms": ms})
                print(out[-1], flush=True)
    return out


def sweep(lengths=(4096, 16384)):
    """Times our alpha=1.5 kernels under a few block configurations (kernel knobs)."""
    out = []
    for T in lengths:
        out += _sweep_one(T)
        torch.cuda.empty_cache()
    return out


PASS_VARIANTS = {  # label: kernel knobs for the forward of ours (alpha=1.5)
    "default": {},
    "max+output (no threshold pass)": {"triton_tau_passes": (0, 0)},
    "1 threshold pass": {"triton_tau_passes": (1, 0)},
    "2 threshold passes": {"triton_tau_passes": (2, 0)},
    "with tile skipping": {"triton_skip": True},  # the default forward does not skip
}


def _with_knobs(changes: dict, fn, timer=None):
    """``fn`` timed (by ``timer``, default ``_bench``) with the kernel knobs ``changes``
    (``attentions.knobs``), after one untimed call; a failure is returned as its message."""
    from attentions import knobs

    with knobs.using(**changes):
        try:
            fn()
            return (timer or _bench)(fn)
        except Exception as err:
            return f"{type(err).__name__}: {str(err)[:200]}"


def _passes_at(T, fn):
    q, k, v = _inputs(2, T, torch.bfloat16, False)
    out = []
    with torch.no_grad():
        for label, env in {"sdpa": None, **PASS_VARIANTS}.items():
            call = (lambda: _sdpa(q, k, v)) if env is None else (lambda: fn(q, k, v))
            out.append({"variant": label, "T": T, "ms": _with_knobs(env or {}, call)})
            print(out[-1], flush=True)
    return out


def passes(lengths=(4096, 16384)):
    """Where the forward's time goes: ours under pass-count variants (differences between
    rows give the cost of one threshold pass; "max+output" is a lower bound of what a
    cheaper threshold search could reach), with SDPA flash in the same run."""
    out = []
    fn = _ours(1.5)
    for T in lengths:
        out += _passes_at(T, fn)
        torch.cuda.empty_cache()
    return out


TRAIN_SHAPES = ((128, 16, 64, 64), (128, 16, 96, 32), (128, 8, 131, 32), (32, 8, 256, 64),
                (16, 8, 512, 64))


def _graphed(step):
    """Median ms of ``step`` replayed from a CUDA graph (after eager warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return _bench(graph.replay)


def train_shapes(shapes=TRAIN_SHAPES) -> list[dict]:
    """Forward+backward at training shapes (B, H, T, D), bf16, causal: SDPA's default backend,
    our fused entmax-1.5, softmax+NAPE on FlexAttention and as SDPA with a dense mask, and ours
    with NAPE, each eagerly and replayed from a CUDA graph (the training step runs as one
    graph)."""
    from attentions.backends import torch_backend

    fns = {"sdpa": _sdpa, "triton_entmax15": _ours(1.5),
           "flex_softmax_nape": None, "sdpa_dense_nape": None, "triton_entmax15_nape": None,
           "torch_entmax15": None}
    out = []
    for B, Hh, T, Dh in shapes:
        from attentions.backends import flex_backend
        from attentions.normalizer import Alibi, Normalizer, nape_slopes

        bias = Alibi(nape_slopes(Hh).cuda())
        ent, soft = Normalizer("entmax", alpha=1.5), Normalizer("softmax")
        from attentions.backends import triton_backend as TB

        fns["flex_softmax_nape"] = lambda q, k, v, b=bias, n=soft: flex_backend.attention(
            q, k, v, norm=n, bias=b)
        # softmax+NAPE as SDPA with a dense float mask (bias and causality, built in the call
        # as the torch backend builds it on the CPU): the other candidate for training lengths
        fns["sdpa_dense_nape"] = lambda q, k, v, b=bias, n=soft: F.scaled_dot_product_attention(
            q, k, v, attn_mask=torch_backend.sdpa_mask(q, k, n, True, b, q.shape[-1] ** -0.5))
        fns["triton_entmax15_nape"] = lambda q, k, v, b=bias, n=ent: TB.attention(
            q, k, v, norm=n, bias=b)
        fns["torch_entmax15"] = lambda q, k, v, n=ent: torch_backend.attention(q, k, v, norm=n)
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, Hh, T, Dh, device="cuda", dtype=torch.bfloat16, generator=g)
                   .requires_grad_() for _ in range(3))
        dy = torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g)
        for name, fn in fns.items():
            def step(fn=fn, q=q, k=k, v=v, dy=dy):
                fn(q, k, v).backward(dy)

            row = {"impl": name, "B": B, "H": Hh, "T": T, "D": Dh}
            if name.startswith("flex"):
                _static_compile()
            try:
                step()
                row["fwdbwd_ms"] = _bench(step)
                row["fwdbwd_graph_ms"] = _graphed(step)
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            out.append(row)
            print(json.dumps(row), flush=True)
            q.grad = k.grad = v.grad = None
    for r in out:
        base = next((b for b in out if b["impl"] == "sdpa" and (b["B"], b["T"], b["D"])
                     == (r["B"], r["T"], r["D"])), None)
        for key in ("fwdbwd_ms", "fwdbwd_graph_ms"):
            if base and base.get(key) and r.get(key):
                r[f"{key}_x_sdpa"] = r[key] / base[key]
    return out


#: forward blocks tried at training shapes: the long-T choice (128 query rows) and smaller
#: blocks, which waste fewer masked rows when a row sees at most a tile or two of keys
SHORT_FWD_CFGS = ["128,64,4,3", "64,64,4,3", "64,64,4,2", "64,32,4,2", "32,64,4,2", "32,32,4,2"]


def sweep_train_shapes(shapes=TRAIN_SHAPES) -> list[dict]:
    """Block configurations of our alpha=1.5 kernels at training shapes: forward+backward
    replayed from a CUDA graph (as the training step runs it), one kernel's blocks varied at a
    time (the knob triton_blocks_<kind>; a forward block set so runs the tiled forward, with
    the one-tile forward off, where the default takes it for rows of up to 128 keys), the
    others at their
    default; "default" rows first."""
    from attentions.backends import triton_backend as TB
    from attentions.normalizer import Normalizer

    ent = Normalizer("entmax", alpha=1.5)
    out = []
    for B, Hh, T, Dh in shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, Hh, T, Dh, device="cuda", dtype=torch.bfloat16, generator=g)
                   .requires_grad_() for _ in range(3))
        dy = torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g)

        def step(q=q, k=k, v=v, dy=dy):
            TB.attention(q, k, v, norm=ent).backward(dy)

        tried = [("default", None)] + [(kind, cfg) for kind, cfgs in (
            ("fwd", SHORT_FWD_CFGS), ("dkdv", DKDV_CFGS), ("dq", DQ_CFGS)) for cfg in cfgs]
        for kind, cfg in tried:
            changes = {} if cfg is None else _blocks(kind, cfg)
            row = {"B": B, "H": Hh, "T": T, "D": Dh, "kernel": kind, "cfg": cfg}
            ms = _with_knobs(changes, step, _graphed)
            row["error" if isinstance(ms, str) else "fwdbwd_graph_ms"] = ms
            out.append(row)
            print(json.dumps(row), flush=True)
            q.grad = k.grad = v.grad = None
        torch.cuda.empty_cache()
    return out


def once(T: int, impl: str = "both") -> None:
    """One forward of ours and/or SDPA flash at (2, 16, T, 64) bf16, after one warm-up call:
    a target for a profiler (``ncu --launch-skip 1 ... python -m suite.bench.cuda --once T``)."""
    q, k, v = _inputs(2, T, torch.bfloat16, False)
    fns = {"ours": _ours(1.5), "sdpa": _sdpa}  # SDPA with its own backend choice
    with torch.no_grad():
        for name, fn in fns.items():
            if impl in (name, "both"):
                fn(q, k, v)
                torch.cuda.synchronize()
                fn(q, k, v)
                torch.cuda.synchronize()


def _base(rows, r, key):
    name = BASELINE_OF.get(r["impl"], BASELINE)
    return next((b.get(key) for b in rows if b["impl"] == name and b["T"] == r["T"]), None)


def format_table(rows):
    head = (f"{'impl':24s} {'T':>6s} {'fwd ms':>9s} {'f+b ms':>9s} {'fwd/base':>9s} "
            f"{'f+b/base':>9s} {'peak GiB':>9s} {'rel err':>9s}  note")
    lines = [f"baseline: {BASELINE} (SDPA with its own backend choice); NAPE rows against "
             "flex_softmax_nape (softmax+NAPE on its fused path)", head, "-" * len(head)]

    def f(x, spec=".3f"):
        return format(x, spec) if isinstance(x, (int, float)) else "-"

    for r in rows:
        bf, bb = _base(rows, r, "fwd_ms"), _base(rows, r, "fwdbwd_ms")
        fr = r["fwd_ms"] / bf if r.get("fwd_ms") and bf else None
        br = r["fwdbwd_ms"] / bb if r.get("fwdbwd_ms") and bb else None
        peak = max(r.get("fwd_peak_gib") or 0, r.get("fwdbwd_peak_gib") or 0) or None
        lines.append(f"{r['impl']:24s} {r['T']:6d} {f(r.get('fwd_ms')):>9s} "
                     f"{f(r.get('fwdbwd_ms')):>9s} {f(fr, '.2f'):>9s} {f(br, '.2f'):>9s} "
                     f"{f(peak, '.2f'):>9s} {f(r.get('rel_err_vs_torch_fp32'), '.1e'):>9s}  "
                     f"{r.get('error', '')[:80]}")
    return "\n".join(lines)


def environment():
    import triton

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
           "gpu": torch.cuda.get_device_name(), "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    from .. import settings

    env.update(settings.git_state())  # the code timed
    try:
        from importlib.metadata import version

        env["adasplash"] = version("adasplash")
    except Exception:
        env["adasplash"] = None
    return env


def long_rows(rows: list[dict], device: str) -> list[dict]:
    """``measure`` rows in `suite bench`'s long format: one dict per (impl, T, pass) with impl,
    T, pass ("fwd" or "fwd+bwd"), median_ms, ratio_to_sdpa (to the baseline of the same rows),
    peak_extra_mib, device, dtype, B, H, D. SDPA with its own backend choice is named
    ``sdpa_softmax`` there (the store's baseline name); NAPE rows take their ratio against
    softmax+NAPE's fused path."""
    out = []
    # tables of 2026-11-27 and before had SDPA with FLASH forced as their baseline
    base = BASELINE if any(r["impl"] == BASELINE for r in rows) else "sdpa_flash"
    for row in rows:
        impl = "sdpa_softmax" if row["impl"] == base else row["impl"]
        for key, pas in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd")):
            if f"{key}_ms" in row:
                out.append({"impl": impl, "T": row["T"], "pass": pas,
                            "median_ms": row[f"{key}_ms"],
                            "peak_extra_mib": 1024 * row[f"{key}_peak_gib"],
                            "device": device, "dtype": row.get("dtype", "bf16"),
                            "B": row["B"], "H": row.get("H", H), "D": row.get("D", D)})
    for r in out:
        name = BASELINE_OF.get(r["impl"], "sdpa_softmax")
        base = next((b["median_ms"] for b in out if b["impl"] == name
                     and b["T"] == r["T"] and b["pass"] == r["pass"]), None)
        r["ratio_to_sdpa"] = r["median_ms"] / base if base else None
    return out


def from_json(path: str) -> list[dict]:
    """The long rows of a table written by ``python -m suite.bench.cuda --out PATH`` (e.g. on
    a GPU machine that cannot reach the tracking server), to log them elsewhere."""
    with open(path) as fh:
        data = json.load(fh)
    return long_rows(data["rows"], data["env"]["gpu"])


def run(lengths=LENGTHS, extras: bool = False, do_bwd: bool = True) -> list[dict]:
    """Measures the table on this CUDA device; returns ``long_rows``."""
    rows = []
    for T in lengths:
        for name, fn in implementations(extras).items():
            rows.append(measure(name, fn, T, do_bwd))
    return long_rows(rows, torch.cuda.get_device_name())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write the rows and environment as JSON here")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--no-bwd", action="store_true", help="forward only")
    ap.add_argument("--extras", action="store_true", help="also ALiBi and alpha=1.25 rows")
    ap.add_argument("--sweep", action="store_true", help="first time block configurations")
    ap.add_argument("--passes", action="store_true",
                    help="first time the forward under pass-count variants")
    ap.add_argument("--train-shapes", action="store_true",
                    help="first time forward+backward at training shapes (torch vs triton)")
    ap.add_argument("--train-sweep", action="store_true",
                    help="last, time block configurations of our kernels at training shapes")
    ap.add_argument("--shapes", default=None, metavar="BxHxTxD,...",
                    help="training shapes of --train-shapes / --train-sweep (default: "
                    + ",".join("x".join(map(str, s)) for s in TRAIN_SHAPES) + ")")
    ap.add_argument("--once", type=int, default=None, metavar="T",
                    help="run one forward (after a warm-up) at length T and exit: for profilers")
    ap.add_argument("--impl", default="both", choices=("both", "ours", "sdpa"),
                    help="with --once: which forward")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda needs a CUDA device", file=sys.stderr)
        return 2
    if args.once:
        once(args.once, args.impl)
        return 0
    env = environment()
    print("#", json.dumps(env), flush=True)
    result = {"env": env, "rows": []}
    if args.sweep:
        try:
            result["sweep"] = sweep()
        except Exception:
            traceback.print_exc()
    if args.passes:
        result["passes"] = passes()
    impls = implementations(args.extras)
    for T in (int(t) for t in args.lengths.split(",") if t.strip()):
        for name, fn in impls.items():
            if name in ("triton_entmax15_nape", "triton_entmax125") and T > 16384:
                continue
            row = measure(name, fn, T, not args.no_bwd)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "w") as fh:
                    json.dump(result, fh, indent=1)
    print(format_table(result["rows"]), flush=True)
    shapes = TRAIN_SHAPES if not args.shapes else tuple(
        tuple(int(n) for n in s.split("x")) for s in args.shapes.split(","))
    if args.train_shapes:  # last: a CUDA graph capture leaves the default generator unusable
        result["train_shapes"] = train_shapes(shapes)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=1)
    if args.train_sweep:
        result["train_sweep"] = sweep_train_shapes(shapes)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
