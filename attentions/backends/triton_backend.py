"""The triton backend: fused alpha-entmax attention on CUDA (kernels in ``triton_kernels``).

Forward and backward of alpha-entmax attention (alpha in (1, 2]; 1.5 and 2 on exact fast paths
without transcendentals), causal or not, per-head ALiBi slopes applied inside the kernels, any
T and S, head dims up to 256 (padded to a power of two >= 16), fp16/bf16/fp32 inputs with fp32
accumulation. Memory is linear in T: the output, four floats per row, and O2 = U V / sum U
only where the backward reads delta from it (``delta_in_dq`` off). Design, pass counts and
costs: TRITON_NOTES.md.

What the kernels do not take goes to the torch backend, which computes the same function:
float64 inputs (the contract's 1e-10 checks), dense bias tensors, softmax and top-k.

triton is imported lazily (``_kernels``); ``usable()`` is True when triton imports and CUDA is
present, or when TRITON_INTERPRET=1 (the CPU tests run the kernels in Triton's interpreter).
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from .. import knobs
from ..normalizer import Alibi, Normalizer
from . import torch_backend

NAME = "triton"

#: size of the per-row list of largest tile maxima that starts the threshold search
R_TOP = 16


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or _interpret()


def _device_ok(device) -> bool:
    dev = torch.device(device)
    return dev.type == "cuda" or (dev.type == "cpu" and _interpret())


#: the normalizer kinds the kernels compute (an allow-list: any other goes elsewhere)
KINDS = frozenset({"entmax"})


def supports(norm: Normalizer, device, bias=None) -> bool:
    if norm.kind not in KINDS or not _device_ok(device):
        return False
    return bias is None or isinstance(bias, Alibi)


def preferred(norm: Normalizer, device, bias=None, size=None) -> bool:
    """Whether ``auto`` takes the kernels: on CUDA for the entmax family (no dense bias), never
    the CPU interpreter. The knob ``triton_auto`` off keeps ``auto`` on the torch backend."""
    return (knobs.current().triton_auto and supports(norm, device, bias)
            and torch.device(device).type == "cuda")


def _kernels():
    from . import triton_kernels

    return triton_kernels


def _mode(alpha: float) -> int:
    return {1.5: 0, 2.0: 1}.get(float(alpha), 2)


#: query blocks whose rows see at most this many key tiles go on with threshold passes until
#: converged (a short list of tile maxima gives a rougher start)
EXTRA_BELOW_TILES = 32

#: estimated threshold error |f(t)| / |f'(t)| at which the adaptive passes stop: (fp16/bf16,
#: fp32). alpha = 1.5 and 2 land on the exact threshold (error ~6e-8) once the support is
#: found; generic alpha's exp2/log2 approximations leave ~1e-6 of noise in f
TAU_TOL = (1e-5, 1e-6)


def tau_passes(alpha: float, dtype: torch.dtype) -> tuple[int, int]:
    """(threshold passes every query block takes after the max pass, at most this many more
    for the blocks that iterate to convergence: rows seeing <= EXTRA_BELOW_TILES key tiles, and
    every block for generic alpha). Override: the knob ``triton_tau_passes`` (n, extra).

    alpha = 1.5 from the top-tile-maxima start: once rows see > 32 tiles, one pass leaves tau
    exact for most rows and within ~1e-3 for the rest (simulated on Gaussian rows), two make it
    exact; shorter rows start rougher and iterate until the error estimate is below TAU_TOL.
    fp32 inputs take enough passes for float32 parity."""
    forced = knobs.current().triton_tau_passes
    if forced is not None:
        return forced
    low = dtype in (torch.float16, torch.bfloat16)
    table = {0: ((1, 6), (3, 6)), 1: ((2, 6), (4, 6)), 2: ((2, 12), (3, 16))}
    return table[_mode(alpha)][0 if low else 1]


def skip_empty_tiles(has_alibi: bool, backward: bool = False) -> bool:
    """Whether a kernel tests each tile for support before its V / dO products. The test is a
    block-wide reduction, a barrier per tile, and nearly every tile of Gaussian inputs holds
    support, so the forward does not test (it was faster without, NAPE included); the
    backward tests with ALiBi only. The measurements: TRITON_NOTES.md, "Forward" item 4 and
    "Measured". The knob ``triton_skip`` forces either way for both."""
    forced = knobs.current().triton_skip
    if forced is not None:
        return forced
    return backward and has_alibi


def _blocks(kind: str, D: int, device, dtype=torch.bfloat16,
            length: int | None = None) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel for rows of up to ``length`` keys
    (None: long rows); the knob ``triton_blocks_<kind>`` (kind: fwd, dkdv, dq) overrides."""
    forced = getattr(knobs.current(), f"triton_blocks_{kind}")
    if forced is not None:
        return forced
    if torch.device(device).type != "cuda":  # the interpreter: few, small programs
        return 32, 32, 1, 1
    big = D > 64
    if dtype == torch.float32:  # parity runs: fp32 tiles need twice the shared memory
        # one stage in the backward: with num_stages=2 the fp32 dq kernel returned wrong dq on
        # an H100 (triton 3.6.0; rel err ~1 at T=17 and 100) while 1 stage gave 1.7e-7
        return (64, 32, 4, 2) if kind == "fwd" else (32, 32, 4, 1)
    if not big and length is not None and length <= SHORT_ROWS:
        return _short_blocks(kind, length)
    if kind == "fwd":
        return (128, 64, 8, 2) if big else (128, 64, 4, 3)
    # D <= 64: the fastest of `python -m suite.bench.cuda --sweep` on an H100 (2026-11-27):
    # forward 128,64,4,3 (5.17 ms at T=16384 against 5.85-7.63 for the others), dQ 128,64,4,3
    # (9.39 ms for the backward against 9.45-10.18) where it reads delta; on an H200
    # (2026-12-01, TRITON_NOTES.md) dK/dV 32,128,4,3 (-1.5% forward+backward against
    # 32,128,4,2) and, where dQ finds delta, 64,64,4,3 (128,64,4,3 spills there)
    if kind == "dkdv":
        return (64, 64, 4, 2) if big else (32, 128, 4, 3)
    if delta_in_dq():
        return (64, 64, 4, 2) if big else (64, 64, 4, 3)
    return (64, 64, 4, 2) if big else (128, 64, 4, 3)


#: rows of at most this many keys (training lengths) take the short-row blocks below
SHORT_ROWS = 512


def _short_blocks(kind: str, length: int) -> tuple[int, int, int, int]:
    """Blocks for D <= 64 at training lengths: a 128-row query tile covers most of a causal
    row of 64 keys with masked work, so smaller query tiles win. The fastest of `python -m
    suite.bench.cuda --train-sweep` on an H200 (2026-12-01; bf16, forward+backward replayed
    from a CUDA graph, one kernel's blocks varied at a time, 0.336 ms with the long-row
    blocks at B=128 H=16 T=64 D=64 and 0.196 ms at B=32 H=8 T=256): at T=64 forward
    64,32,4,2 (0.265), dK/dV 32,64,4,2 (0.315), dQ 64,32,4,2 (0.314); at T=256 forward
    64,64,4,3 (0.181), dK/dV 32,64,4,2 (0.190), dQ 64,64,4,3 (0.190)."""
    if kind == "dkdv":
        return 32, 64, 4, 2
    return (64, 32, 4, 2) if length <= 128 else (64, 64, 4, 3)


#: rows of at most this many keys run the forward on one key tile held in registers (CUDA,
#: D <= 64; the interpreter: at most 32 keys, so the CPU tests run both forwards)
ONE_TILE_KEYS = 128

#: threshold updates of the one-tile forward at most (each is arithmetic on registers; alpha =
#: 1.5 and 2 stop once the support is found, generic alpha once within TAU_TOL)
ONE_TILE_MAX_IT = 32


def _one_tile_blocks(S: int, D: int, device) -> tuple[int, int, int, int] | None:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the one-tile forward when it takes rows of
    S keys, else None. At training lengths a row sees a few key tiles, and the tiled forward
    recomputes QK^T and reloads K on every threshold pass (up to 7 at such lengths); with all
    keys in one tile the scores are computed once and the threshold iterates on registers.
    The knob ``triton_one_tile`` = the largest S that takes it (0: never). The tiled forward's
    blocks (``triton_blocks_fwd``) do not turn it off: rows short enough for one tile take it
    unless ``triton_one_tile`` says otherwise."""
    cuda = torch.device(device).type == "cuda"
    forced = knobs.current().triton_one_tile
    limit = forced if forced is not None else (ONE_TILE_KEYS if cuda else 32)
    if S > limit or D > 64:
        return None
    bn = max(16, triton_next_pow2(S))
    if not cuda:
        return 32, bn, 1, 1
    return 64, bn, (4 if bn <= 128 else 8), 1


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


_NO_SLOPES: dict = {}


def _slopes(bias, H, device):
    if isinstance(bias, Alibi):
        return bias.slopes.to(device=device, dtype=torch.float32).contiguous(), True
    if device not in _NO_SLOPES:  # a placeholder argument; one allocation per device
        _NO_SLOPES[device] = torch.zeros(1, device=device, dtype=torch.float32)
    return _NO_SLOPES[device], False


def alibi_window(has_alibi: bool, causal: bool, S: int, tiled: bool = True) -> bool:
    """Whether the kernels visit only the key tiles that can still hold weight under a head's
    ALiBi slope: the tiled forward starts each query block's passes at the first such tile,
    dQ likewise, and dK/dV ends its query loop after the last query that reaches the key
    block (causal ALiBi heads with slope > 0; NoPE heads and non-causal rows visit every
    tile). The bound is exact: c1 q.k <= c1 |q| max |k|, and a key whose bound lies below the
    row max - 1 (backward: mx + tau) has zero weight, as tau >= max - 1; see
    ``triton_kernels._window_start``. It costs a pass over K for the key norms, so it runs
    for rows longer than SHORT_ROWS (training lengths see a few tiles). The knob
    ``triton_window``: False never, True at every length."""
    forced = knobs.current().triton_window
    on = S > SHORT_ROWS if forced is None else forced
    return has_alibi and causal and tiled and on


def _key_norms(k: torch.Tensor) -> torch.Tensor:
    """max_j |k_j| per (batch, head), float32, (B * H,) contiguous: the window's bound."""
    return torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32).amax(-1).reshape(-1)


def forward(q, k, v, alpha, causal, bias, sm_scale, need_o2=True, n_tau=None):
    """Runs the forward kernel; returns (out, o2 or None, stats (B, H, 4, T) float32)."""
    kern = _kernels()
    B, H, T, D = q.shape
    S = k.shape[2]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    o2 = torch.empty_like(q) if need_o2 else out
    stats = torch.empty(B, H, 4, T, device=q.device, dtype=torch.float32)
    slopes, has_alibi = _slopes(bias, H, q.device)
    BD = max(16, triton_next_pow2(D))
    one = _one_tile_blocks(S, D, q.device)
    bm, bn, warps, stages = one or _blocks("fwd", D, q.device, q.dtype, S)
    n_tau, extra = tau_passes(alpha, q.dtype) if n_tau is None else (n_tau, 0)
    grid = (triton_cdiv(T, bm), B * H)
    window = alibi_window(has_alibi, causal, S, one is None)
    kmax = _key_norms(k) if window else slopes
    kern._fwd_kernel[grid](
        q, k, v, out, o2, stats, slopes, kmax,
        H, T, S, D, S - T, float(sm_scale), float(alpha) - 1.0, 1.0 / (float(alpha) - 1.0),
        TAU_TOL[q.dtype == torch.float32], MODE=_mode(alpha), N_TAU=n_tau, EXTRA=extra,
        EXTRA_BELOW=EXTRA_BELOW_TILES, CAUSAL=bool(causal), HAS_ALIBI=has_alibi,
        STORE_O2=bool(need_o2), SKIP=skip_empty_tiles(has_alibi), BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_D=BD, R_TOP=R_TOP, EVEN_D=(BD == D), PREC=_prec(q.dtype), ASM=not _interpret(),
        ONE_TILE=one is not None, MAX_IT=ONE_TILE_MAX_IT, WINDOW=window,
        num_warps=warps, num_stages=stages,
    )
    return out, (o2 if need_o2 else None), stats


def delta_in_dq() -> bool:
    """Whether the backward finds delta_i = sum_j U_ij dP_ij / sum_j U_ij inside the dQ kernel
    (default) instead of from O2 = U V / sum U kept by the forward: the training forward then
    runs as the inference one (no second P V product, no O2 store), and the dQ kernel carries
    one more product (u K) and the row sums of u and u (dP - d0). The knob
    ``triton_delta_in_dq``: 0, O2; 1 or 2: the row sums on the ALU (1) or the tensor cores (2,
    as u 1 and u V) whatever the length (default: 2 for long rows, 1 up to SHORT_ROWS keys;
    TRITON_NOTES.md)."""
    return knobs.current().triton_delta_in_dq != 0


def _delta_mode(exact: bool, S: int) -> int:
    """The dQ kernel's DELTA: 0 reads delta (O2 kept), 1 or 2 finds it (``delta_in_dq``)."""
    if exact:
        return 0
    forced = knobs.current().triton_delta_in_dq
    if forced in (1, 2):
        return forced
    return 1 if S <= SHORT_ROWS else 2


def backward(q, k, v, o, stats, dout, alpha, causal, bias, sm_scale, exact=None):
    """dq, dk, dv. ``o``: O2 (``exact``) or the forward's output (delta found in the dQ
    kernel); ``exact`` defaults to ``not delta_in_dq()``."""
    kern = _kernels()
    exact = (not delta_in_dq()) if exact is None else exact
    B, H, T, D = q.shape
    S = k.shape[2]
    dout = dout.contiguous()
    BD = max(16, triton_next_pow2(D))
    # one launch: dO / Z (what both kernels read) and the per-row statistics shift = mx + tau,
    # 1/Z, the U scale times Z, and delta times the U scale (dS = u (dP' usc Z - delta usc)
    # with dP' = (dO / Z) V^T), delta_i = dO_i . O2_i; without O2, dO_i . O_i / Z_i there,
    # and the dQ kernel (launched first) replaces it by delta times the U scale
    bstats = torch.empty_like(stats)
    dos = torch.empty_like(dout)
    prep = 64 if torch.device(q.device).type == "cuda" else 32
    kern._bwd_prep_kernel[(triton_cdiv(T, prep), B * H)](
        dout, o.contiguous(), stats, bstats, dos, T, D, BLOCK=prep, BLOCK_D=BD,
        EVEN_D=(BD == D), EXACT=bool(exact), num_warps=4 if prep == 64 else 1)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    slopes, has_alibi = _slopes(bias, H, q.device)
    common = dict(MODE=_mode(alpha), CAUSAL=bool(causal), HAS_ALIBI=has_alibi,
                  SKIP=skip_empty_tiles(has_alibi, backward=True), BLOCK_D=BD,
                  EVEN_D=(BD == D), PREC=_prec(q.dtype), ASM=not _interpret())
    args = (H, T, S, D, S - T, float(sm_scale), float(alpha) - 1.0, 1.0 / (float(alpha) - 1.0))
    bm, bn, warps, stages = _blocks("dq", D, q.device, q.dtype, S)
    window = alibi_window(has_alibi, causal, S)
    kmax = _key_norms(k) if window else slopes
    rmax = torch.zeros(B * H, device=q.device, dtype=torch.float32) if window else slopes
    kern._bwd_dq_kernel[(triton_cdiv(T, bm), B * H)](
        q, k, v, dos, bstats, dq, slopes, kmax, rmax, *args,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, DELTA=_delta_mode(exact, S),
        WINDOW=window, **common)
    bm, bn, warps, stages = _blocks("dkdv", D, q.device, q.dtype, S)
    kern._bwd_dkdv_kernel[(triton_cdiv(S, bn), B * H)](
        q, k, v, dos, bstats, dk, dv, slopes, rmax, *args,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, WINDOW=window, **common)
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# The kernels as operators the compiler sees (``torch.library``): a model under
# ``torch.compile`` runs them with no graph break, and CUDA graphs capture their launches.
# ALiBi slopes travel as a float32 tensor of shape (H,) (or a placeholder of shape (1,) with
# ``has_alibi`` False): operators take tensors and scalars, not the compact ``Alibi`` object.


@torch.library.custom_op("suite::entmax_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
            has_alibi: bool, alpha: float, causal: bool, sm_scale: float,
            need_o2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bias = Alibi(slopes) if has_alibi else None
    out, o2, stats = forward(q, k, v, alpha, causal, bias, sm_scale, need_o2=need_o2)
    return out, (o2 if need_o2 else q.new_empty(0)), stats


@_fwd_op.register_fake
def _(q, k, v, slopes, has_alibi, alpha, causal, sm_scale, need_o2):
    B, H, T, _ = q.shape
    stats = q.new_empty((B, H, 4, T), dtype=torch.float32)
    return q.new_empty(q.shape), (q.new_empty(q.shape) if need_o2 else q.new_empty(0)), stats


@torch.library.custom_op("suite::entmax_attention_bwd", mutates_args=())
def _bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            stats: torch.Tensor, dout: torch.Tensor, slopes: torch.Tensor, has_alibi: bool,
            alpha: float, causal: bool, sm_scale: float, exact: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bias = Alibi(slopes) if has_alibi else None
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return backward(q, k, v, o, stats, dout, alpha, causal, bias, sm_scale, exact=exact)


@_bwd_op.register_fake
def _(q, k, v, o, stats, dout, slopes, has_alibi, alpha, causal, sm_scale, exact):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, slopes, has_alibi, alpha, causal, sm_scale, need_o2 = inputs
    out, o2, stats = output
    # with O2 the backward takes delta from it; without, from the output and the dQ kernel
    ctx.save_for_backward(q, k, v, o2 if need_o2 else out, stats, slopes)
    ctx.args = (has_alibi, alpha, causal, sm_scale, bool(need_o2))


def _backward(ctx, dout, _do2, _dstats):
    q, k, v, o, stats, slopes = ctx.saved_tensors
    has_alibi, alpha, causal, sm_scale, exact = ctx.args
    dq, dk, dv = _bwd_op(q, k, v, o, stats, dout.contiguous(), slopes, has_alibi, alpha,
                         causal, sm_scale, exact)
    return dq, dk, dv, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def fused_backward() -> bool:
    """Whether a call that needs gradients runs the fused backward kernels (default: yes;
    the knob ``triton_fused_backward`` off sends such calls to the torch backend instead).

    float32 runs the backward with one pipeline stage (``_blocks``): with two, the float32 dq
    kernel returned wrong gradients on an H100 with triton 3.6.0."""
    return knobs.current().triton_fused_backward


def attention(q, k, v, *, norm: Normalizer, causal: bool = True, bias=None, sm_scale=None):
    """Normalized attention; see the package docstring for the function computed."""
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    fused = (
        not (grad and not fused_backward())
        and supports(norm, q.device, bias)
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and q.dtype == k.dtype == v.dtype
        and v.shape[-1] == q.shape[-1] <= 256
        and q.shape[0] * q.shape[1] > 0
        and q.shape[2] > 0
        and k.shape[2] > 0
        and sm_scale > 0  # the max pass keeps raw q.k maxima and scales them afterwards
    )
    if not fused:
        return torch_backend.attention(q, k, v, norm=norm, causal=causal, bias=bias,
                                       sm_scale=sm_scale)
    slopes, has_alibi = _slopes(bias, q.shape[1], q.device)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the kernels index densely
    out, _, _ = _fwd_op(q, k, v, slopes, has_alibi, float(norm.alpha), bool(causal),
                        float(sm_scale), grad and not delta_in_dq())
    return out
