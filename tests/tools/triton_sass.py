"""Instruction mix of the Triton kernels on sm_90, without a GPU.

    python -m tests.tools.triton_sass --kernel fwd

Compiles the forward (or a backward) kernel ahead of time for an H100 (``triton.compile`` with
``GPUTarget("cuda", 90, 32)``; pointer and length arguments marked 16-divisible as the launcher
specialises them), disassembles the cubin with the ``cuobjdump`` that ships with triton, finds
the loops (backward branches) and counts the SASS opcodes in each. One loop iteration handles one
key tile, so "instructions per tile / scores per thread" is the per-score cost that bounds an
ALU-bound pass. Registers and shared memory per program come from the cubin's resource usage.

Needs triton with its NVIDIA backend (no CUDA device, no TRITON_INTERPRET).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

KINDS = ("fwd", "dkdv", "dq")


def _signature(fn, const):
    names = fn.arg_names
    sig = {}
    for n in names:
        if n in const:
            sig[n] = "constexpr"
        elif n in ("STATS", "BSTATS", "SLOPES", "KMAX", "RMAX"):
            sig[n] = "*fp32"
        elif n in ("Q", "K", "V", "Out", "O2", "DO", "DQ", "DK", "DV"):
            sig[n] = "*bf16"
        elif n in ("sm_scale", "am1", "r", "tol"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    div = [n for n in names if sig[n].startswith("*") or n in ("T", "S", "D")]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div}
    return sig, attrs


def compile_kernel(kind: str = "fwd", mode: int = 0, causal: bool = True, alibi: bool = False,
                   blocks: tuple[int, int, int, int] | None = None, skip: bool = False,
                   one_tile: int = 0, o2: bool | None = None,
                   delta: int | None = None):
    """(cubin bytes, SASS text, resource-usage text) of one kernel variant for sm_90, bf16,
    D=64, with the backend's launch configuration unless ``blocks`` is given; ``one_tile``: the
    forward that holds rows of up to that many keys in one tile; ``o2``: the forward that also
    stores O2 (default: one-tile only); ``delta``: the dQ kernel's DELTA (0: reads delta, 1 or
    2: finds it; default: the backend's choice)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from attentions.backends import triton_backend as TB
    from attentions.backends import triton_kernels as K

    fn = {"fwd": K._fwd_kernel, "dkdv": K._bwd_dkdv_kernel, "dq": K._bwd_dq_kernel}[kind]
    one = TB._one_tile_blocks(one_tile, 64, "cuda") if one_tile else None
    bm, bn, warps, stages = blocks or one or TB._blocks(kind, 64, "cuda")
    const = dict(MODE=mode, CAUSAL=causal, HAS_ALIBI=alibi, SKIP=skip, BLOCK_M=bm, BLOCK_N=bn,
                 BLOCK_D=64, EVEN_D=True, PREC="tf32", ASM=True)
    if kind == "fwd":
        n_tau, extra = TB.tau_passes({0: 1.5, 1: 2.0}.get(mode, 1.25), torch.bfloat16)
        const.update(N_TAU=n_tau, EXTRA=extra, EXTRA_BELOW=TB.EXTRA_BELOW_TILES,
                     STORE_O2=bool(one_tile) if o2 is None else o2, R_TOP=TB.R_TOP,
                     ONE_TILE=one is not None,
                     WINDOW=TB.alibi_window(alibi, causal, 1 << 14, one is None))
    if kind in ("dq", "dkdv"):
        const["WINDOW"] = TB.alibi_window(alibi, causal, 1 << 14)  # long rows
    if kind == "dq":
        if delta is None:  # the backend's choice for long rows
            delta = TB._delta_mode(not TB.delta_in_dq(), 1 << 14)
        const["DELTA"] = delta
    names = fn.arg_names
    sig, attrs = _signature(fn, const)
    src = ASTSource(fn=fn, signature=sig, attrs=attrs,
                    constexprs={(names.index(k),): v for k, v in const.items() if k in names})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": warps, "num_stages": stages})
    cubin = ck.asm["cubin"]
    return cubin, _cuobjdump(cubin, "--dump-sass"), _cuobjdump(cubin, "--dump-resource-usage")


def _cuobjdump(cubin: bytes, flag: str) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        return subprocess.run([tool, flag, fh.name], capture_output=True, text=True,
                              check=True).stdout


def loops(sass: str) -> list[dict]:
    """Each loop (a backward branch) of a SASS listing: its address range and opcode counts."""
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    out = []
    for addr, text in ins:
        if "BRA" not in text:
            continue
        target = re.search(r"0x([0-9a-f]+)", text.split("BRA", 1)[1])
        if target and int(target.group(1), 16) < addr:
            lo = int(target.group(1), 16)
            ops = collections.Counter(
                re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
                for a, t in ins if lo <= a <= addr)
            out.append({"start": lo, "end": addr, "instructions": sum(ops.values()),
                        "ops": dict(ops.most_common())})
    return out


def resources(usage: str) -> dict:
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
    return dict(zip(("registers", "stack", "shared", "local"), map(int, m.groups()))) if m else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default="fwd", choices=KINDS)
    ap.add_argument("--alpha", type=float, default=1.5)
    ap.add_argument("--alibi", action="store_true")
    ap.add_argument("--skip", action="store_true", help="compile the tile-skipping variant")
    ap.add_argument("--blocks", default=None, help="BLOCK_M,BLOCK_N,warps,stages")
    ap.add_argument("--sass", default=None, help="also write the SASS listing here")
    ap.add_argument("--o2", action="store_true", help="forward: the training variant (O2)")
    ap.add_argument("--delta", type=int, default=None, choices=(0, 1, 2),
                    help="dq: reads delta (0) or finds it with its row sums on the ALU (1) or the "
                         "tensor cores (2); default: the backend's choice for long rows")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: this compiles for sm_90", file=sys.stderr)
        return 2
    from attentions.backends import triton_backend as TB

    blocks = tuple(int(x) for x in args.blocks.split(",")) if args.blocks else None
    _, sass, usage = compile_kernel(args.kernel, TB._mode(args.alpha), True, args.alibi,
                                    blocks, args.skip,
                                    o2=args.o2 or None,
                                    delta=args.delta)
    if args.sass:
        with open(args.sass, "w") as fh:
            fh.write(sass)
    bm, bn, warps, _ = blocks or TB._blocks(args.kernel, 64, "cuda")
    per_thread = bm * bn // (32 * warps)
    print(f"# {args.kernel} alpha={args.alpha} alibi={args.alibi} skip={args.skip} "
          f"blocks={bm},{bn},{warps} (scores per thread per tile: {per_thread}) "
          f"{resources(usage)}")
    for lp in loops(sass):
        top = ", ".join(f"{k}:{v}" for k, v in list(lp["ops"].items())[:12])
        print(f"loop {lp['start']:#07x}-{lp['end']:#07x}: {lp['instructions']:5d} instructions "
              f"({lp['instructions'] / per_thread:.1f} per score)  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
