"""Triton kernels of the fused alpha-entmax attention (imported only by ``triton_backend``).

Units. For query row i and key j, z_ij = sm_scale * q_i . k_j + b_ij (b: ALiBi), and the kernels
work in x_ij = (alpha - 1) * z_ij - mx_i with mx_i = max_j (alpha - 1) z_ij, so x <= 0 and the
threshold tau_i lies in [-1, 0). With d = [x - tau]_+ and r = 1 / (alpha - 1):

    p_ij = d^r / Z_i,   Z_i = sum_j d^r        (Z = 1 up to the error of tau; dividing is free)

Forward, one program per (query block, batch*head), longest causal rows first, all passes in
one launch:
1. max pass: QK^T per key tile (one max per score on the raw dot product); each row keeps its
   R_TOP largest tile maxima; the row max is the largest of them.
2. start: the exact tau of that list (a subset of the row, so a lower bound of the row's tau),
   iterated in registers until no row moves.
3. threshold passes: QK^T again, accumulate over x > t the count, sum(x - t) and
   sum((x - t)^2) (alpha = 1.5: squares and adds only), update a bracket [lo, hi] and move t to
   the root of the quadratic model, exact once the support is (see ``_update15``); alpha = 2:
   Michelot steps; other alpha: Halley with bisection. N_TAU passes, more (adaptive) on blocks
   whose rows see few key tiles.
4. output pass: QK^T, p, O = P V / Z and, with STORE_O2 (training where the backward reads
   delta from it), O2 = U V / sum U with U = p^(2-alpha); with SKIP, tiles with no entry above
   tau skip the PV products.
Rows of at most BLOCK_N keys (ONE_TILE: short training rows) skip 1-3: QK^T once, the scores
stay in registers and the threshold iterates on them (``_one_tile_tau``), then one P V.
WINDOW (causal ALiBi, long rows): the max pass takes the diagonal tiles first, and every pass
starts at the first key tile that can still hold weight (``_window_start``: c1 q.k is at most
c1 |q| max|k|, the bias falls with distance, and weight needs x > max - 1).
Row statistics (mx, tau, 1/Z, Z^(alpha-2)) are stored for the backward: linear memory.

Backward (two kernels after a prep kernel): dQ per query block looping over key blocks, then
dK/dV per key block looping over query blocks; both recompute x from the row statistics
(shift = mx + tau, 1/Z, the U scale and delta times it, prepared by ``triton_backend.backward``)
and use dz = U * (dP - delta), delta_i = sum_j U_ij dP_ij / sum_j U_ij = dO_i . O2_i: read
from O2, or (DELTA) found by the dQ kernel, which stores it for dK/dV. Masked tiles (causal
diagonal, partial blocks) run in loops of their own. With WINDOW, dQ starts at the reach of
mx + tau and dK/dV ends at the largest reach of the head's rows (found by dQ). Costs and
measurements: TRITON_NOTES.md.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))


def _fix_interpreter():
    """Triton 3.6's interpreter turns scalars into 1-element arrays, and NumPy >= 2.3 refuses
    int() on those, so loop bounds computed from program_id fail. Index through item()."""
    from triton.runtime import interpreter

    orig = interpreter._patch_lang_tensor
    if getattr(orig, "_suite_fixed", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._suite_fixed = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    _fix_interpreter()


@triton.jit
def _load_rows(base, rows, offs_d, n_rows, D, EVEN_D: tl.constexpr, MASK: tl.constexpr):
    """A (len(rows), BLOCK_D) tile of a contiguous (n_rows, D) matrix, zeros outside."""
    ptrs = base + rows[:, None] * D + offs_d[None, :]
    if EVEN_D:
        if MASK:
            return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        return tl.load(ptrs)
    if MASK:
        return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D), other=0.0)
    return tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)


@triton.jit
def _load_cols(base, cols, offs_d, n_rows, D, EVEN_D: tl.constexpr, MASK: tl.constexpr):
    """The transposed tile (BLOCK_D, len(cols)) of a contiguous (n_rows, D) matrix."""
    ptrs = base + cols[None, :] * D + offs_d[:, None]
    if EVEN_D:
        if MASK:
            return tl.load(ptrs, mask=cols[None, :] < n_rows, other=0.0)
        return tl.load(ptrs)
    if MASK:
        return tl.load(ptrs, mask=(cols[None, :] < n_rows) & (offs_d[:, None] < D), other=0.0)
    return tl.load(ptrs, mask=offs_d[:, None] < D, other=0.0)


@triton.jit
def _key_range(i0, S, off, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Key tiles of the query block starting at i0: [0, full_n) visible to every row of the
    block (no mask), [full_n, hi_n) the causal diagonal and a partial last tile (masked)."""
    if CAUSAL:
        hi_n = tl.minimum(S, i0 + BLOCK_M + off)
        full_n = tl.minimum(tl.maximum(i0 + off + 1, 0) // BLOCK_N * BLOCK_N, hi_n)
        full_n = tl.maximum(full_n, 0)
    else:
        hi_n = S
        full_n = S // BLOCK_N * BLOCK_N
    return full_n, hi_n


@triton.jit
def _slope(SLOPES, bh, H, am1, HAS_ALIBI: tl.constexpr):
    """This head's ALiBi slope times (alpha - 1), 0 without ALiBi."""
    slope_c = 0.0
    if HAS_ALIBI:
        slope_c = tl.load(SLOPES + bh % H) * am1
    return slope_c


@triton.jit
def _update15(t, lo, hi, cnt, s1, s2):
    """alpha = 1.5 bracket update from the sums over x > t of 1, (x - t), (x - t)^2.

    f(tau) = sum [x - tau]_+^2 - 1 is convex and decreasing. g(tau) = sum_{x > t} (x - tau)^2
    equals f + 1 at t; for tau > t it is >= f + 1, for tau < t <= f + 1. So:
    f(t) >= 0: the Newton step is a lower bound and g's smaller root an upper bound;
    f(t) < 0: t is an upper bound and g's root a lower bound. g's root is tau itself when no
    entry lies between t and tau, so t moves to it (clipped into the bracket).
    """
    f = s2 - 1.0
    disc = s1 * s1 - cnt * f
    has = disc >= 0.0
    u = f / (s1 + tl.sqrt(tl.maximum(disc, 0.0)))  # smaller root - t, cancellation-free
    u = tl.where(has, u, 0.0)
    newton = t + f / tl.maximum(2.0 * s1, 1e-30)
    above = f >= 0.0
    lo = tl.where(above, tl.maximum(lo, newton), tl.where(has, tl.maximum(lo, t + u), lo))
    hi = tl.where(above, tl.where(has, tl.minimum(hi, t + u), hi), tl.minimum(hi, t))
    nxt = tl.where(has, tl.minimum(tl.maximum(t + u, lo), hi), lo)
    return nxt, lo, hi


@triton.jit
def _update2(t, lo, hi, cnt, s1):
    """alpha = 2 (sparsemax): f = sum [x - tau]_+ - 1 is convex, piecewise linear; the
    support step t + (s1 - 1) / cnt is a lower bound from either side (Michelot)."""
    f = s1 - 1.0
    step = t + f / tl.maximum(cnt, 1.0)
    step = tl.where(cnt > 0.0, step, lo)
    hi = tl.where(f < 0.0, tl.minimum(hi, t), hi)
    lo = tl.maximum(lo, step)
    return tl.minimum(lo, hi), lo, hi


@triton.jit
def _update_gen(t, lo, hi, f0, f1, f2, r):
    """Any alpha: Halley on f = sum d^r - 1 safeguarded by bisection (f0 = sum d^r,
    f1 = sum d^(r-1), f2 = sum d^(r-2))."""
    f = f0 - 1.0
    df = -r * f1
    ddf = r * (r - 1.0) * f2
    lo = tl.where(f >= 0.0, t, lo)
    hi = tl.where(f < 0.0, t, hi)
    step = t - 2.0 * f * df / (2.0 * df * df - f * ddf)
    ok = (step >= lo) & (step <= hi)  # at convergence the step is t itself, = lo or hi
    return tl.where(ok, step, 0.5 * (lo + hi)), lo, hi


@triton.jit
def _indicator(d, ASM: tl.constexpr):
    """1.0 where d > 0, else 0.0, as float arithmetic. On the GPU one saturating multiply
    (mul.sat clamps to [0, 1]; d > 1e-30 gives 1, -inf gives 0). A compare-and-select does the
    same in the interpreter, but on sm_90 LLVM packs the 64 compare results per thread into
    16-bit masks and unpacks them again (~4 extra instructions per score, seen in the SASS)."""
    if ASM:
        return tl.inline_asm_elementwise("mul.sat.f32 $0, $1, 0f7149F2CA;", "=r,r", [d],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return tl.where(d > 0.0, 1.0, 0.0)


@triton.jit
def _tile_stats(d, MODE: tl.constexpr, ASM: tl.constexpr):
    """Row sums over one tile of d = x - t for the threshold update at t (-inf where masked).
    alpha = 1.5: count, sum d, sum d^2 over d > 0 (no transcendentals); alpha = 2: count, sum d;
    other alpha: ``_tile_stats_gen``."""
    dp = tl.maximum(d, 0.0)
    cnt = tl.sum(_indicator(d, ASM), 1)
    if MODE == 0:
        return cnt, tl.sum(dp, 1), tl.sum(dp * dp, 1)
    return cnt, tl.sum(dp, 1), cnt * 0.0


@triton.jit
def _tile_stats_gen(d, r):
    """Any alpha: sums of d^r, d^(r-1), d^(r-2) over d > 0 (one log2, one exp2 per score)."""
    pos = d > 0.0
    ds = tl.where(pos, d, 1.0)
    a = tl.where(pos, tl.exp2((r - 2.0) * tl.log2(ds)), 0.0)  # d^(r-2)
    b = a * ds  # d^(r-1)
    return tl.sum(b * ds, 1), tl.sum(b, 1), tl.sum(a, 1)


@triton.jit
def _stats(d, r, MODE: tl.constexpr, ASM: tl.constexpr):
    """The threshold sums of one tile (or of the kept list) for this alpha's update."""
    if MODE == 2:
        return _tile_stats_gen(d, r)
    return _tile_stats(d, MODE, ASM)


@triton.jit
def _tau_update(t, lo, hi, c, s1, s2, r, MODE: tl.constexpr):
    """This alpha's bracket update from the sums at t; also returns the estimated error of t,
    |f(t)| / |f'(t)| (the Newton step)."""
    if MODE == 0:
        err = tl.abs(s2 - 1.0) / tl.maximum(2.0 * s1, 1e-30)
        t, lo, hi = _update15(t, lo, hi, c, s1, s2)
    elif MODE == 1:
        err = tl.abs(s1 - 1.0) / tl.maximum(c, 1.0)
        t, lo, hi = _update2(t, lo, hi, c, s1)
    else:
        err = tl.abs(c - 1.0) / tl.maximum(r * s1, 1e-30)
        t, lo, hi = _update_gen(t, lo, hi, c, s1, s2, r)
    return t, lo, hi, err


@triton.jit
def _p_u(d, r, MODE: tl.constexpr, ASM: tl.constexpr):
    """Unnormalized p = d^r and u = d^(r-1) (proportional to p^(2-alpha)), 0 where d <= 0."""
    if MODE == 0:
        dp = tl.maximum(d, 0.0)
        return dp * dp, dp
    elif MODE == 1:
        return tl.maximum(d, 0.0), _indicator(d, ASM)
    else:
        pos = d > 0.0
        lg = tl.log2(tl.where(pos, d, 1.0))
        return tl.where(pos, tl.exp2(r * lg), 0.0), tl.where(pos, tl.exp2((r - 1.0) * lg), 0.0)


@triton.jit
def _shift_scores(x, rows, cols, shift, S, off, c1, slope_c, MASK: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """d = (alpha-1) (sm_scale x + bias) - shift for a tile of raw dot products x (one FMA
    per score without ALiBi), -inf where masked."""
    if HAS_ALIBI:
        x = x * c1 - slope_c * tl.abs((rows[:, None] + off - cols[None, :]).to(tl.float32))
        x = x - shift[:, None]
    else:
        x = x * c1 - shift[:, None]
    if MASK:
        ok = cols[None, :] < S
        if CAUSAL:
            ok = ok & (cols[None, :] <= rows[:, None] + off)
        x = tl.where(ok, x, NEG_INF)
    return x


@triton.jit
def _shifted(q, kt, rows, cols, shift, S, off, c1, slope_c,
             MASK: tl.constexpr, CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
             PREC: tl.constexpr):
    """``_shift_scores`` of the tile q k^T."""
    return _shift_scores(tl.dot(q, kt, input_precision=PREC), rows, cols, shift, S, off, c1,
                         slope_c, MASK, CAUSAL, HAS_ALIBI)


@triton.jit
def _max_tile(top, mn, s, rows, cols, S, off, c1, slope_c, MASK: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """One key tile of the max pass, from its raw dot products s: each row keeps its R largest
    tile maxima in ``top`` (mn: the row's smallest kept value). Without ALiBi the raw q.k
    maxima are kept (scaled once per row afterwards, c1 > 0), so a score costs one max."""
    if HAS_ALIBI:
        s = _shift_scores(s, rows, cols, mn * 0.0, S, off, c1, slope_c, MASK, CAUSAL, HAS_ALIBI)
    elif MASK:
        ok = cols[None, :] < S
        if CAUSAL:
            ok = ok & (cols[None, :] <= rows[:, None] + off)
        s = tl.where(ok, s, NEG_INF)
    v = tl.max(s, 1)
    # replace the row's smallest kept value (the kept values are distinct: the list starts
    # from distinct sentinels; an exact tie of two tile maxima at the minimum would duplicate
    # v, which only perturbs the start, not the bracket of the passes)
    top = tl.where((top == mn[:, None]) & (v > mn)[:, None], v[:, None], top)
    return top, tl.min(top, 1)


@triton.jit
def _max_range(top, mn, q, kb, rows, offs_n, offs_d, lo_n, hi_n, S, D, off, c1, slope_c,
               MASK: tl.constexpr, CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
               BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr):
    """Max pass over key tiles [lo_n, hi_n) (``_max_tile`` per tile)."""
    for n0 in range(lo_n, hi_n, BLOCK_N):
        cols = n0 + offs_n
        s = tl.dot(q, _load_cols(kb, cols, offs_d, S, D, EVEN_D, MASK), input_precision=PREC)
        top, mn = _max_tile(top, mn, s, rows, cols, S, off, c1, slope_c, MASK, CAUSAL,
                            HAS_ALIBI)
    return top, mn


@triton.jit
def _reach(bq, mref, slope_c):
    """How many keys back from the diagonal a row's entries can lie above mref - 1
    (``_window_start``), with margins for the rounding of q.k and of the norms."""
    return (bq * 1.001 + 1e-3 - mref + 1.0) / slope_c + 1.0


@triton.jit
def _window_start(bq, mref, rows, off, T, full_n, slope_c, BLOCK_N: tl.constexpr):
    """Under causal ALiBi, the first key tile that can hold an entry of this block's rows above
    mref_i - 1 (x units, no row shift). bq_i >= c1 q_i.k for every key (c1 |q_i| max_j |k_j|),
    so key j at distance n = i + off - j scores at most bq_i - slope_c n: below mref_i - 1 once
    n > (bq_i - mref_i + 1) / slope_c. With mref_i at most the row's max such keys hold neither
    the max nor any weight (tau >= max - 1). Margins cover the rounding of q.k and the norms;
    rows past T and rows with no visible key do not count."""
    first = (rows + off).to(tl.float32) - _reach(bq, mref, slope_c)
    first = tl.where((rows < T) & (mref > -1e30), first, 3e38)
    j = tl.minimum(tl.maximum(tl.min(first, 0), 0.0), full_n.to(tl.float32))
    return tl.minimum(j.to(tl.int32) // BLOCK_N * BLOCK_N, full_n)


@triton.jit
def _stats_range(c, s1, s2, q, kb, rows, offs_n, offs_d, shift, lo_n, hi_n, S, D, off, c1,
                 slope_c, r, MODE: tl.constexpr, ASM: tl.constexpr, MASK: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, BLOCK_N: tl.constexpr,
                 EVEN_D: tl.constexpr, PREC: tl.constexpr):
    """Threshold-pass sums over key tiles [lo_n, hi_n) at the per-row shift mx + t."""
    for n0 in range(lo_n, hi_n, BLOCK_N):
        cols = n0 + offs_n
        kt = _load_cols(kb, cols, offs_d, S, D, EVEN_D, MASK)
        d = _shifted(q, kt, rows, cols, shift, S, off, c1, slope_c, MASK, CAUSAL, HAS_ALIBI,
                     PREC)
        a, b, e = _stats(d, r, MODE, ASM)
        c += a
        s1 += b
        s2 += e
    return c, s1, s2


@triton.jit
def _out_tile(acc, acc2, zp, zu, x, vb, rows, cols, offs_d, shift, S, D, off, c1, slope_c, r,
              MODE: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_ALIBI: tl.constexpr, STORE_O2: tl.constexpr, SKIP: tl.constexpr,
              EVEN_D: tl.constexpr, PREC: tl.constexpr, ASM: tl.constexpr):
    """One key tile of the output pass from its raw dot products x: O += P V (and U V for
    training). With SKIP, a tile whose rows all have zero weight skips the PV products (one
    block-wide test on the row sums of the tile; it costs a barrier per tile, so it pays only
    where many tiles are empty)."""
    d = _shift_scores(x, rows, cols, shift, S, off, c1, slope_c, MASK, CAUSAL, HAS_ALIBI)
    p, u = _p_u(d, r, MODE, ASM)
    zt = tl.sum(p, 1)
    need = True  # a compile-time True without SKIP: no branch in the loop
    if SKIP:
        need = tl.max(zt, 0) > 0.0
    if need:
        v = _load_rows(vb, cols, offs_d, S, D, EVEN_D, MASK)
        acc += tl.dot(p.to(v.dtype), v, input_precision=PREC)
        if STORE_O2:
            zu += tl.sum(u, 1)
            acc2 += tl.dot(u.to(v.dtype), v, input_precision=PREC)
    zp += zt
    return acc, acc2, zp, zu


@triton.jit
def _out_range(acc, acc2, zp, zu, q, kb, vb, rows, offs_n, offs_d, shift, lo_n, hi_n, S, D,
               off, c1, slope_c, r, MODE: tl.constexpr, MASK: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, STORE_O2: tl.constexpr,
               SKIP: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
               PREC: tl.constexpr, ASM: tl.constexpr):
    """Output pass over key tiles [lo_n, hi_n) (``_out_tile`` per tile)."""
    for n0 in range(lo_n, hi_n, BLOCK_N):
        cols = n0 + offs_n
        x = tl.dot(q, _load_cols(kb, cols, offs_d, S, D, EVEN_D, MASK), input_precision=PREC)
        acc, acc2, zp, zu = _out_tile(acc, acc2, zp, zu, x, vb, rows, cols, offs_d, shift, S,
                                      D, off, c1, slope_c, r, MODE, MASK, CAUSAL, HAS_ALIBI,
                                      STORE_O2, SKIP, EVEN_D, PREC, ASM)
    return acc, acc2, zp, zu


@triton.jit
def _one_tile_tau(x, mx, live, rows, off, S, tol, r, MODE: tl.constexpr,
                  CAUSAL: tl.constexpr, ASM: tl.constexpr, MAX_IT: tl.constexpr):
    """The threshold of rows whose scores are all in registers (x, -inf where masked): from
    the bracket [-1, 0) (generic alpha: [-1, -n^(1-alpha)] for n visible keys) the same
    updates as the threshold passes, each on the kept tile, until every live row's estimated
    error |f(t)| / |f'(t)| is at most tol or no row moves (at most MAX_IT steps)."""
    zero = mx * 0.0
    lo = zero - 1.0
    hi = zero
    if MODE == 2:
        if CAUSAL:
            n_vis = tl.minimum(tl.maximum(rows + off + 1, 1), S)
        else:
            n_vis = zero + S
        hi = -tl.exp2(-tl.log2(n_vis.to(tl.float32)) / r)
    t = lo
    it = 0
    go = True
    while go:
        c, s1, s2 = _stats(x - (mx + t)[:, None], r, MODE, ASM)
        tn, lo, hi, err = _tau_update(t, lo, hi, c, s1, s2, r, MODE)
        it += 1
        moved = tl.max(tl.where(live, tl.abs(tn - t), 0.0), 0)
        worst = tl.max(tl.where(live, err, 0.0), 0)
        t = tn
        go = (it < MAX_IT) & (worst > tol) & (moved > 0.0)
    return t, lo, hi


@triton.jit
def _fwd_kernel(Q, K, V, Out, O2, STATS, SLOPES, KMAX,
                H, T, S, D, off, sm_scale, am1, r, tol,
                MODE: tl.constexpr, N_TAU: tl.constexpr, EXTRA: tl.constexpr,
                EXTRA_BELOW: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_ALIBI: tl.constexpr, STORE_O2: tl.constexpr, SKIP: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                R_TOP: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
                ASM: tl.constexpr, ONE_TILE: tl.constexpr = False, MAX_IT: tl.constexpr = 32,
                WINDOW: tl.constexpr = False):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest causal rows first
    bh = tl.program_id(1).to(tl.int64)
    i0 = pid_m * BLOCK_M
    rows = i0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    qb = Q + bh * T * D
    kb = K + bh * S * D
    vb = V + bh * S * D
    q = _load_rows(qb, rows, offs_d, T, D, EVEN_D, True)
    c1 = sm_scale * am1
    slope_c = _slope(SLOPES, bh, H, am1, HAS_ALIBI)
    full_n, hi_n = _key_range(i0, S, off, CAUSAL, BLOCK_M, BLOCK_N)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)

    if ONE_TILE:
        # every key in one tile (S <= BLOCK_N): the scores are computed once and kept in
        # registers; the threshold iterates on them until converged, then one P V product
        x = _shifted(q, _load_cols(kb, offs_n, offs_d, S, D, EVEN_D, True), rows, offs_n, zero,
                     S, off, c1, slope_c, True, CAUSAL, HAS_ALIBI, PREC)
        m = tl.max(x, 1)
        live = m > -1e36
        mx = tl.where(live, m, 0.0)
        t, lo, hi = _one_tile_tau(x, mx, live, rows, off, S, tol, r, MODE, CAUSAL, ASM, MAX_IT)
        tau = tl.where(live, t, 0.0)
        p, u = _p_u(x - (mx + tau)[:, None], r, MODE, ASM)
        v = _load_rows(vb, offs_n, offs_d, S, D, EVEN_D, True)
        acc = tl.dot(p.to(v.dtype), v, input_precision=PREC)
        zp = tl.sum(p, 1)
        if STORE_O2:
            acc2 = tl.dot(u.to(v.dtype), v, input_precision=PREC)
            zu = tl.sum(u, 1)
        else:
            acc2 = acc
            zu = zp
    else:
        # 1. max pass, keeping the R_TOP largest tile maxima of each row; distinct finite
        #    sentinels (below any score) make "replace the minimum" replace one entry
        rr = tl.arange(0, R_TOP)
        top = tl.zeros([BLOCK_M, R_TOP], dtype=tl.float32) - (rr[None, :] + 1.0) * 1e37
        mn = tl.min(top, 1)
        lo_n = 0  # the first key tile the passes visit
        bq = zero
        if WINDOW:
            # causal ALiBi: the diagonal tiles first; their maxima bound how far back a key can
            # still matter (``_window_start``), and the passes start there
            top, mn = _max_range(top, mn, q, kb, rows, offs_n, offs_d, full_n, hi_n, S, D, off,
                                 c1, slope_c, True, CAUSAL, HAS_ALIBI, BLOCK_N, EVEN_D, PREC)
            qf = q.to(tl.float32)
            bq = c1 * tl.sqrt(tl.sum(qf * qf, 1)) * tl.load(KMAX + bh)
            if slope_c > 0.0:
                lo_n = _window_start(bq, tl.max(top, 1), rows, off, T, full_n, slope_c, BLOCK_N)
            top, mn = _max_range(top, mn, q, kb, rows, offs_n, offs_d, lo_n, full_n, S, D, off,
                                 c1, slope_c, False, CAUSAL, HAS_ALIBI, BLOCK_N, EVEN_D, PREC)
        else:
            top, mn = _max_range(top, mn, q, kb, rows, offs_n, offs_d, 0, full_n, S, D, off, c1,
                                 slope_c, False, CAUSAL, HAS_ALIBI, BLOCK_N, EVEN_D, PREC)
            top, mn = _max_range(top, mn, q, kb, rows, offs_n, offs_d, full_n, hi_n, S, D, off,
                                 c1, slope_c, True, CAUSAL, HAS_ALIBI, BLOCK_N, EVEN_D, PREC)
        kept = top > -1e36  # real tile maxima (raw or scaled), not sentinels
        m = tl.max(top, 1)
        live = m > -1e36
        if WINDOW:
            if slope_c > 0.0:  # again from the row maxima themselves (a later start)
                lo_n = _window_start(bq, m, rows, off, T, full_n, slope_c, BLOCK_N)
        if not HAS_ALIBI:
            top = top * c1
            m = m * c1
        mx = tl.where(live, m, 0.0)

        # 2. start: tau of the kept list (a subset of the row; its tau is a lower bound of the
        #    row's, for any alpha), iterated until no row moves (at most 12 steps on R_TOP values
        #    per row; generic alpha: safeguarded Halley on the list)
        lo = zero - 1.0
        hi = zero
        xs = tl.where(kept, top - mx[:, None], NEG_INF)
        t = lo
        slo = lo
        shi = hi
        it = 0
        go = True
        while go:
            c, s1, s2 = _stats(xs - t[:, None], r, MODE, ASM)
            tn, slo, shi, _ = _tau_update(t, slo, shi, c, s1, s2, r, MODE)
            it += 1
            go = (it < 12) & (tl.max(tl.abs(tn - t), 0) > 0.0)
            t = tn
        t = tl.maximum(t, slo)
        if MODE == 2:  # the row's own upper bound, -n^(1-alpha) for n visible keys
            if CAUSAL:
                n_vis = tl.minimum(tl.maximum(rows + off + 1, 1), S)
            else:
                n_vis = zero + S
            hi = -tl.exp2(-tl.log2(n_vis.to(tl.float32)) / r)
            t = tl.minimum(t, hi)

        # 3. threshold passes: N_TAU on every block. Blocks whose rows see at most EXTRA_BELOW key
        #    tiles (a short list of tile maxima, so a rougher start) go on until every live row's
        #    estimated threshold error |f(t)| / |f'(t)| is at most tol: up to one more pass when
        #    they see more than EXTRA_BELOW / 2 tiles, up to EXTRA more below that. Generic alpha
        #    iterates so on every block.
        if N_TAU + EXTRA > 0:
            n_tiles = tl.cdiv(hi_n - lo_n, BLOCK_N)  # the tiles the rows' lists saw
            dyn = (n_tiles <= EXTRA_BELOW) | (MODE == 2)
            more = tl.where((n_tiles <= EXTRA_BELOW // 2) | (MODE == 2), EXTRA,
                            tl.minimum(EXTRA, 1))
            n_max = N_TAU + more * dyn.to(tl.int32)
            it = 0
            go = n_max > 0
            while go:
                shift = mx + t
                c, s1, s2 = _stats_range(zero, zero, zero, q, kb, rows, offs_n, offs_d, shift,
                                         lo_n, full_n, S, D, off, c1, slope_c, r, MODE, ASM, False,
                                         CAUSAL, HAS_ALIBI, BLOCK_N, EVEN_D, PREC)
                c, s1, s2 = _stats_range(c, s1, s2, q, kb, rows, offs_n, offs_d, shift, full_n,
                                         hi_n, S, D, off, c1, slope_c, r, MODE, ASM, True, CAUSAL,
                                         HAS_ALIBI, BLOCK_N, EVEN_D, PREC)
                t, lo, hi, err = _tau_update(t, lo, hi, c, s1, s2, r, MODE)
                it += 1
                worst = tl.max(tl.where(live, err, 0.0), 0)
                go = (it < n_max) & ((it < N_TAU) | (dyn & (worst > tol)))
        tau = tl.where(live, t, 0.0)

        # 4. output pass
        shift = mx + tau
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        acc, acc2, zp, zu = _out_range(acc, acc2, zero, zero, q, kb, vb, rows, offs_n, offs_d,
                                       shift, lo_n, full_n, S, D, off, c1, slope_c, r, MODE, False,
                                       CAUSAL, HAS_ALIBI, STORE_O2, SKIP, BLOCK_N, EVEN_D, PREC,
                                       ASM)
        acc, acc2, zp, zu = _out_range(acc, acc2, zp, zu, q, kb, vb, rows, offs_n, offs_d, shift,
                                       full_n, hi_n, S, D, off, c1, slope_c, r, MODE, True, CAUSAL,
                                       HAS_ALIBI, STORE_O2, SKIP, BLOCK_N, EVEN_D, PREC, ASM)
    zinv = tl.where(live & (zp > 0.0), 1.0 / zp, 0.0)
    rmask = rows < T
    optr = rows[:, None] * D + offs_d[None, :]
    omask = rmask[:, None] & (offs_d[None, :] < D)
    tl.store(Out + bh * T * D + optr, (acc * zinv[:, None]).to(Out.dtype.element_ty),
             mask=omask)
    if STORE_O2:
        zuinv = tl.where(zu > 0.0, 1.0 / zu, 0.0)
        tl.store(O2 + bh * T * D + optr, (acc2 * zuinv[:, None]).to(O2.dtype.element_ty),
                 mask=omask)
    # U = p^(2-alpha) = u * Z^(alpha-2)
    usc = tl.where(zinv > 0.0, tl.exp2((2.0 - (1.0 + 1.0 / r)) * tl.log2(
        tl.where(zinv > 0.0, zinv, 1.0))), 0.0)
    sb = STATS + bh * 4 * T
    tl.store(sb + rows, mx, mask=rmask)
    tl.store(sb + T + rows, tau, mask=rmask)
    tl.store(sb + 2 * T + rows, zinv, mask=rmask)
    tl.store(sb + 3 * T + rows, usc, mask=rmask)


@triton.jit
def _row_vec(ptr, rows, n, MASK: tl.constexpr):
    if MASK:
        return tl.load(ptr + rows, mask=rows < n, other=0.0)
    return tl.load(ptr + rows)


@triton.jit
def _bwd_prep_kernel(DO, OUT, STATS, BSTATS, DOS, T, D, BLOCK: tl.constexpr,
                     BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, EXACT: tl.constexpr):
    """Row statistics of the backward in one launch. dO / Z (DOS, the dO both backward
    kernels read: P = p / Z then needs no per-tile scaling); from the forward's (mx, tau, 1/Z,
    U scale): (mx + tau, 1/Z, U scale * Z, *), the U scale times Z because dP' = (dO / Z) V^T
    is what the kernels form. Slot 3: with EXACT (OUT is O2 = U V / sum U), delta * U scale,
    delta_i = dO_i . O2_i; else (OUT is the output O) the start dO_i . O_i / Z_i of the dQ
    kernel, which finds delta on the fly and writes delta * U scale there."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    do = _load_rows(DO + bh * T * D, rows, offs_d, T, D, EVEN_D, True).to(tl.float32)
    o = _load_rows(OUT + bh * T * D, rows, offs_d, T, D, EVEN_D, True).to(tl.float32)
    dot = tl.sum(do * o, 1)
    rm = rows < T
    sb = STATS + bh * 4 * T
    ob = BSTATS + bh * 4 * T
    usc = _row_vec(sb + 3 * T, rows, T, True)
    zinv = _row_vec(sb + 2 * T, rows, T, True)
    tl.store(DOS + bh * T * D + rows[:, None] * D + offs_d[None, :],
             (do * zinv[:, None]).to(DOS.dtype.element_ty),
             mask=rm[:, None] & (offs_d[None, :] < D))
    tl.store(ob + rows, _row_vec(sb, rows, T, True) + _row_vec(sb + T, rows, T, True), mask=rm)
    tl.store(ob + T + rows, zinv, mask=rm)
    tl.store(ob + 2 * T + rows, tl.where(zinv > 0.0, usc / tl.where(zinv > 0.0, zinv, 1.0), 0.0),
             mask=rm)
    if EXACT:
        tl.store(ob + 3 * T + rows, dot * usc, mask=rm)
    else:
        tl.store(ob + 3 * T + rows, dot * zinv, mask=rm)


@triton.jit
def _dkdv_range(dk, dv, k, v, qb, dob, sb, cols, offs_m, offs_d, lo_m, hi_m, T, S, D, off, c1,
                slope_c, r, MODE: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_ALIBI: tl.constexpr, SKIP: tl.constexpr, BLOCK_M: tl.constexpr,
                EVEN_D: tl.constexpr, PREC: tl.constexpr, ASM: tl.constexpr):
    """dK, dV contributions of the query blocks [lo_m, hi_m); tiles are (keys x queries).
    dob: dO / Z; row statistics (``_bwd_prep_kernel``): shift = mx + tau, the U scale times Z,
    delta times the U scale."""
    for m0 in range(lo_m, hi_m, BLOCK_M):
        rows = m0 + offs_m
        q = _load_rows(qb, rows, offs_d, T, D, EVEN_D, MASK)
        do = _load_rows(dob, rows, offs_d, T, D, EVEN_D, MASK)
        shift = _row_vec(sb, rows, T, MASK)
        usc = _row_vec(sb + 2 * T, rows, T, MASK)
        dusc = _row_vec(sb + 3 * T, rows, T, MASK)
        dt = tl.dot(k, tl.trans(q), input_precision=PREC)
        if HAS_ALIBI:
            dt = dt * c1 - slope_c * tl.abs((rows[None, :] + off - cols[:, None]).to(tl.float32))
            dt = dt - shift[None, :]
        else:
            dt = dt * c1 - shift[None, :]
        if MASK:
            ok = (cols[:, None] < S) & (rows[None, :] < T)
            if CAUSAL:
                ok = ok & (cols[:, None] <= rows[None, :] + off)
            dt = tl.where(ok, dt, NEG_INF)
        p, u = _p_u(dt, r, MODE, ASM)
        need = True
        if SKIP:
            need = tl.max(tl.max(u, 1), 0) > 0.0
        if need:
            dv += tl.dot(p.to(do.dtype), do, input_precision=PREC)  # P = p / Z: 1/Z in dO
            dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
            dst = u * (dpt * usc[None, :] - dusc[None, :])
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, BSTATS, DK, DV, SLOPES, RMAX,
                     H, T, S, D, off, sm_scale, am1, r,
                     MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                     SKIP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
                     ASM: tl.constexpr, WINDOW: tl.constexpr = False):
    """dK, dV for one block of BLOCK_N keys, looping over the query blocks that see them:
    masked blocks (the causal diagonal, a partial last query block, a partial key block)
    apart from the interior ones. With WINDOW (causal ALiBi) the loop ends after the last
    query that can reach these keys: RMAX holds the largest reach of this head's rows, in
    keys back from the diagonal, found by the dQ kernel."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    j0 = pid_n * BLOCK_N
    cols = j0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + bh * S * D, cols, offs_d, S, D, EVEN_D, True)
    v = _load_rows(V + bh * S * D, cols, offs_d, S, D, EVEN_D, True)
    qb = Q + bh * T * D
    dob = DO + bh * T * D
    sb = BSTATS + bh * 4 * T
    c1 = sm_scale * am1
    slope_c = _slope(SLOPES, bh, H, am1, HAS_ALIBI)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if CAUSAL:
        # query i sees key j when j <= i + off; blocks starting before diag_end need the mask
        lo = tl.maximum(j0 - off, 0) // BLOCK_M * BLOCK_M
        diag_end = j0 + BLOCK_N - off
        mid = lo + tl.maximum(diag_end - lo + BLOCK_M - 1, 0) // BLOCK_M * BLOCK_M
    else:
        lo = 0
        mid = 0
    t_full = T // BLOCK_M * BLOCK_M
    if j0 + BLOCK_N > S:  # a partial key block: every tile takes the mask
        mid = T
    mid = tl.minimum(tl.maximum(mid, lo), T)
    end = tl.maximum(mid, t_full)
    cap = T
    if WINDOW:
        if slope_c > 0.0:  # query i reaches key j only if i + off - j < its reach
            last = tl.minimum(j0 + BLOCK_N - off + tl.load(RMAX + bh), T * 1.0)
            cap = tl.minimum((last.to(tl.int32) + BLOCK_M) // BLOCK_M * BLOCK_M, T)
    dk, dv = _dkdv_range(dk, dv, k, v, qb, dob, sb, cols, offs_m, offs_d, lo,
                         tl.minimum(mid, cap), T, S, D, off, c1, slope_c, r, MODE, True, CAUSAL,
                         HAS_ALIBI, SKIP, BLOCK_M, EVEN_D, PREC, ASM)
    dk, dv = _dkdv_range(dk, dv, k, v, qb, dob, sb, cols, offs_m, offs_d, mid,
                         tl.minimum(end, cap), T, S, D, off, c1, slope_c, r, MODE, False, CAUSAL,
                         HAS_ALIBI, SKIP, BLOCK_M, EVEN_D, PREC, ASM)
    dk, dv = _dkdv_range(dk, dv, k, v, qb, dob, sb, cols, offs_m, offs_d, end, cap, T, S, D,
                         off, c1, slope_c, r, MODE, True, CAUSAL, HAS_ALIBI, SKIP, BLOCK_M,
                         EVEN_D, PREC, ASM)
    omask = (cols[:, None] < S) & (offs_d[None, :] < D)
    optr = bh * S * D + cols[:, None] * D + offs_d[None, :]
    tl.store(DK + optr, (dk * sm_scale).to(DK.dtype.element_ty), mask=omask)
    tl.store(DV + optr, dv.to(DV.dtype.element_ty), mask=omask)


@triton.jit
def _dq_range(dq, bk, su, st, q, do, kb, vb, rows, offs_n, offs_d, shift, usc, dusc, lo_n, hi_n,
              S, D, off, c1, slope_c, r, MODE: tl.constexpr, MASK: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, SKIP: tl.constexpr,
              BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
              ASM: tl.constexpr, DELTA: tl.constexpr):
    """dQ contributions of the key tiles [lo_n, hi_n). With DELTA (delta not known yet; dusc
    holds the start d0 = dO . O / Z): dq += u (dP' - d0) K, bk += u K and the row sums su of u
    and st of u (dP' - d0), so that delta / Z = d0 + st / su and dQ = usc (dq - st / su bk)."""
    for n0 in range(lo_n, hi_n, BLOCK_N):
        cols = n0 + offs_n
        kt = _load_cols(kb, cols, offs_d, S, D, EVEN_D, MASK)
        d = _shifted(q, kt, rows, cols, shift, S, off, c1, slope_c, MASK, CAUSAL, HAS_ALIBI,
                     PREC)
        _, u = _p_u(d, r, MODE, ASM)
        need = True
        if SKIP:
            need = tl.max(tl.max(u, 1), 0) > 0.0
        if need:
            vt = _load_cols(vb, cols, offs_d, S, D, EVEN_D, MASK)
            dp = tl.dot(do, vt, input_precision=PREC)
            if DELTA == 2:  # the row sums on the tensor cores: su = u 1, st from bv = u V
                t = u * (dp - dusc[:, None])
                u16 = u.to(kt.dtype)
                dq += tl.dot(t.to(kt.dtype), tl.trans(kt), input_precision=PREC)
                bk += tl.dot(u16, tl.trans(kt), input_precision=PREC)
                st += tl.dot(u16, tl.trans(vt), input_precision=PREC)
                su += tl.dot(u16, tl.full([BLOCK_N, 16], 1.0, kt.dtype), input_precision=PREC)
            elif DELTA:
                t = u * (dp - dusc[:, None])
                su += tl.sum(u, 1)
                st += tl.sum(t, 1)
                dq += tl.dot(t.to(kt.dtype), tl.trans(kt), input_precision=PREC)
                bk += tl.dot(u.to(kt.dtype), tl.trans(kt), input_precision=PREC)
            else:
                ds = u * (dp * usc[:, None] - dusc[:, None])
                dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
    return dq, bk, su, st


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, BSTATS, DQ, SLOPES, KMAX, RMAX,
                   H, T, S, D, off, sm_scale, am1, r,
                   MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                   SKIP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
                   ASM: tl.constexpr, DELTA: tl.constexpr = False,
                   WINDOW: tl.constexpr = False):
    """dQ for one block of BLOCK_M queries. With DELTA it also finds delta (the forward kept
    no O2) and stores delta * U scale for the dK/dV kernel, which runs after it. With WINDOW
    (causal ALiBi) the key tiles start where a key can still score above a row's mx + tau
    (``_window_start``)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest causal rows first
    bh = tl.program_id(1).to(tl.int64)
    i0 = pid_m * BLOCK_M
    rows = i0 + tl.arange(0, BLOCK_M)
    rmask = rows < T
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + bh * T * D, rows, offs_d, T, D, EVEN_D, True)
    do = _load_rows(DO + bh * T * D, rows, offs_d, T, D, EVEN_D, True)
    sb = BSTATS + bh * 4 * T
    shift = tl.load(sb + rows, mask=rmask, other=0.0)
    usc = tl.load(sb + 2 * T + rows, mask=rmask, other=0.0)
    dusc = tl.load(sb + 3 * T + rows, mask=rmask, other=0.0)
    kb = K + bh * S * D
    vb = V + bh * S * D
    c1 = sm_scale * am1
    slope_c = _slope(SLOPES, bh, H, am1, HAS_ALIBI)
    full_n, hi_n = _key_range(i0, S, off, CAUSAL, BLOCK_M, BLOCK_N)
    lo_n = 0
    if WINDOW:
        if slope_c > 0.0:
            qf = q.to(tl.float32)
            bq = c1 * tl.sqrt(tl.sum(qf * qf, 1)) * tl.load(KMAX + bh)
            # weight needs x > shift: a start of shift + 1 in _window_start's units
            lo_n = _window_start(bq, shift + 1.0, rows, off, T, full_n, slope_c, BLOCK_N)
            # the dK/dV kernel (launched next) ends its query loop by the largest reach
            reach = tl.where(rmask, _reach(bq, shift + 1.0, slope_c), 0.0)
            tl.atomic_max(RMAX + bh, tl.max(reach, 0))
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if DELTA == 2:
        bk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        su = tl.zeros([BLOCK_M, 16], dtype=tl.float32)
        st = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    elif DELTA:
        bk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        su = tl.zeros([BLOCK_M], dtype=tl.float32)
        st = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        bk = dq  # unused
        su = tl.zeros([BLOCK_M], dtype=tl.float32)
        st = su
    dq, bk, su, st = _dq_range(dq, bk, su, st, q, do, kb, vb, rows, offs_n, offs_d, shift,
                               usc, dusc, lo_n, full_n, S, D, off, c1, slope_c, r, MODE, False,
                               CAUSAL, HAS_ALIBI, SKIP, BLOCK_N, EVEN_D, PREC, ASM, DELTA)
    dq, bk, su, st = _dq_range(dq, bk, su, st, q, do, kb, vb, rows, offs_n, offs_d, shift, usc,
                               dusc, full_n, hi_n, S, D, off, c1, slope_c, r, MODE, True, CAUSAL,
                               HAS_ALIBI, SKIP, BLOCK_N, EVEN_D, PREC, ASM, DELTA)
    if DELTA == 2:
        su = tl.sum(su, 1) * (1.0 / 16.0)
        st = tl.sum(do.to(tl.float32) * st, 1) - dusc * su
    if DELTA:
        corr = tl.where(su > 0.0, st / tl.where(su > 0.0, su, 1.0), 0.0)
        dq = (dq - corr[:, None] * bk) * usc[:, None]
        tl.store(sb + 3 * T + rows, (dusc + corr) * usc, mask=rmask)
    omask = rmask[:, None] & (offs_d[None, :] < D)
    tl.store(DQ + bh * T * D + rows[:, None] * D + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=omask)
