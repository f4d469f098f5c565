"""numba kernels of the numba backend: alpha-entmax attention rows over the support only.

Imported only by ``numba_backend`` (lazily), so importing ``attentions`` never imports numba.
Serial kernels that release the GIL: the backend runs one per (head, block of query rows) on
each of its worker threads, after torch computed that block's scores z (C, Sv) with BLAS.

- ``entmax_fwd``, per query row: the row max m (given, or computed here when the ALiBi bias
  is added here), the candidates x_j = (alpha-1)(z_j - m) > -1 (tau >= -1 always, so nothing
  else can be in the support), tau on the candidates only (``_tau``), then
  out_i = sum over the support of p_j v_j, p_j = [x_j - tau]_+^(1/(alpha-1)).
  Scratch: O(Sv) per thread.
- ``entmax_bwd``: the support from the saved (m, tau); p_j, s_j = p_j^(2-alpha),
  dp_j = dout_i . v_j, dz_j = s_j (dp_j - <s, dp>/sum s); dq, dk, dv over the support only
  (a thread owns whole heads, or private dk, dv).

- ``short_fwd`` / ``short_bwd``: the same for rows short enough (training lengths) that a head's
  scores are computed here, row by row, instead of handed over from a matmul per block.

Kinds: 1 sparsemax (alpha = 2), 2 entmax alpha = 1.5, 3 entmax, other alpha (softmax stays
in torch: its exp vectorizes there); for top-k softmax (4) ``kth_largest`` finds each row's
cut. Scalars and sums are float64 (the row data may be float32). No (T, S) buffer: the
caller's score block is the only large array.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# fast-math without nnan/ninf: masked scores and dense biases may hold -inf
FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

SOFTMAX, SPARSEMAX, ENT15, ENTGEN, TOPK = 0, 1, 2, 3, 4


@njit(fastmath=FM, cache=True, inline="always")
def _powi(d, e):
    """d ** e for a small integer e >= 0 (multiplications only, vectorizes)."""
    r = 1.0
    for _ in range(e):
        r *= d
    return r


@njit(fastmath=FM, cache=True, inline="always")
def _pos_pow(d, r, ri):
    """d ** r for d > 0 and 0 for d <= 0; ``ri >= 0`` says r is that integer."""
    if ri >= 0:
        return _powi(d, ri) if d > 0.0 else 0.0
    return math.exp(r * math.log(d)) if d > 0.0 else 0.0


@njit(fastmath=FM, cache=True, inline="always")
def _int_exp(r):
    """r as an int if it is one (up to rounding), else -1."""
    if abs(r - round(r)) < 1e-9 and r < 16.5:
        return int(round(r))
    return -1


@njit(fastmath=FM, cache=True, inline="always")
def _compact(cx, ci, nc, t):
    """Keeps the entries of (cx, ci)[:nc] with cx > t, in order; returns their count."""
    k = 0
    for j in range(nc):
        xj = cx[j]
        cx[k] = xj
        ci[k] = ci[j]
        k += 1 if xj > t else 0
    return k


@njit(fastmath=FM, cache=True, inline="always")
def _sums(cx, nc, t, r, ri):
    """f(t) + 1 = sum d^r, sum d^(r-1), sum d^(r-2) over d = [x - t]_+ (d^(r-2) counted
    only where d > 0). Integer r up to 5 get loops of plain multiplications (vectorize)."""
    f = 0.0
    f1 = 0.0
    f2 = 0.0
    if ri == 2:
        for j in range(nc):
            d = max(cx[j] - t, 0.0)
            f2 += 1.0 if d > 0.0 else 0.0
            f1 += d
            f += d * d
    elif ri == 3:
        for j in range(nc):
            d = max(cx[j] - t, 0.0)
            f2 += d
            f1 += d * d
            f += d * d * d
    elif ri == 4:
        for j in range(nc):
            d = max(cx[j] - t, 0.0)
            a = d * d
            f2 += a
            f1 += a * d
            f += a * a
    elif ri == 5:
        for j in range(nc):
            d = max(cx[j] - t, 0.0)
            a = d * d * d
            f2 += a
            f1 += a * d
            f += a * d * d
    else:
        for j in range(nc):
            d = cx[j] - t
            if d > 0.0:
                a = _pos_pow(d, r - 2.0, ri - 2 if ri >= 2 else -1)
                f2 += a
                f1 += a * d
                f += a * d * d
    return f, f1, f2


@njit(fastmath=FM, cache=True)
def _tau(cx, ci, nc, kind, alpha, t0):
    """tau of alpha-entmax over candidates cx[:nc] (max 0), given t0 <= tau with f(t0) >= 0
    (t0 = -1 always qualifies); candidates at or below t0 are ignored.

    Compacts (cx, ci) to (a superset of) the support and returns (tau, nc). Passes over the
    candidates are branch-free (vectorize); the set is compacted when it has halved.

    alpha in {1.5, 2}: Newton from the left on f(t) = sum [x - t]_+^r - 1 (convex, decreasing,
    so every step stays left of the root and the set {x > t} only shrinks), and at every step
    the closed form of the root over the current set; that closed form is the exact tau once
    it lies between t and the set's minimum (then the set is the support).
    Other alpha: Halley steps safeguarded by bisection in [lo, hi], then Newton from a point
    just left of the root (the polish) until it stops moving.
    """
    r = 1.0 / (alpha - 1.0)
    if kind == SPARSEMAX or kind == ENT15:
        t = t0
        for _ in range(200):
            kf = 0.0
            s1 = 0.0
            s2 = 0.0
            dmin = np.inf
            for j in range(nc):
                d = cx[j] - t
                pos = d > 0.0
                dd = d if pos else 0.0
                kf += 1.0 if pos else 0.0
                s1 += dd
                s2 += dd * dd
                dmin = min(dmin, d if pos else np.inf)
            if kf == 0.0:
                return t, nc
            if kind == SPARSEMAX:
                tc = t + (s1 - 1.0) / kf
                if tc >= t and tc - t <= dmin:
                    return tc, _compact(cx, ci, nc, t)
                tn = tc
            else:
                mean = s1 / kf
                disc = (1.0 - (s2 - s1 * mean)) / kf
                if disc >= 0.0:
                    tc = t + mean - math.sqrt(disc)
                    if tc >= t and tc - t <= dmin:
                        return tc, _compact(cx, ci, nc, t)
                tn = t + (s2 - 1.0) / (2.0 * s1)
            if not tn > t:
                return t, _compact(cx, ci, nc, t)
            t = tn
            if 2.0 * kf < nc:
                nc = _compact(cx, ci, nc, t)
        return t, _compact(cx, ci, nc, t)

    ri = _int_exp(r)
    lo = t0
    hi = -math.pow(max(nc, 1), 1.0 - alpha)
    t = 0.5 * (lo + hi)
    for _ in range(30):
        f, f1, f2 = _sums(cx, nc, t, r, ri)
        f -= 1.0
        f1 *= -r
        f2 *= r * (r - 1.0)
        if f >= 0.0:
            lo = t
        else:
            hi = t
        den = 2.0 * f1 * f1 - f * f2
        if f == 0.0 or den == 0.0:
            break
        step = t - 2.0 * f * f1 / den
        if abs(step - t) <= 1e-12:  # converged (cubically): what is left is the polish
            break
        t = step if (step > lo and step < hi) else 0.5 * (lo + hi)
        if hi - lo <= 1e-13:
            break
    # polish: Newton on the candidates above the bracket, until it stops moving
    nc = _compact(cx, ci, nc, lo)
    for _ in range(8):
        f, f1, f2 = _sums(cx, nc, t, r, ri)
        if f1 <= 0.0:
            break
        tn = min(max(t + (f - 1.0) / (r * f1), lo), hi)
        if abs(tn - t) <= 1e-15:
            t = tn
            break
        t = tn
    return t, nc


@njit(fastmath=FM, cache=True, inline="always")
def _p(d, kind, r, ri):
    """p = d^r for d = x - tau > 0."""
    if kind == SPARSEMAX:
        return d
    if kind == ENT15:
        return d * d
    return _pos_pow(d, r, ri)


@njit(fastmath=FM, cache=True, nogil=True)
def entmax_fwd(z, bmax, mrow, v, out, mst, tst, kind, alpha, cx, ci, acc):
    """One head, a block of C query rows. z (C, Sp) scores with bias and mask applied (-inf
    where masked; Sp a multiple of the key block), bmax (C, Sp // BLK) the key blocks' maxima,
    mrow (C,) the row maxima, v (S, Dv); writes out (C, Dv), m and tau (C,).
    Scratch: cx, ci (Sp + Sp/BLK + 1,), acc (Dv + 1,) in the inputs' dtype.

    tau_A of the block maxima alone is a lower bound of tau (a subset's f is smaller), so only
    the elements above it in the blocks whose maximum is above it are candidates."""
    C, Sp = z.shape
    nb = bmax.shape[1]
    blk = Sp // nb
    Dv = v.shape[1]
    a1 = alpha - 1.0
    r = 1.0 / a1
    ri = _int_exp(r)
    for c in range(C):
        m = mrow[c]
        if m == -np.inf:  # nothing visible: p = 0
            mst[c] = 0.0
            tst[c] = 0.0
            out[c, :] = 0.0
            continue
        br = bmax[c]
        nc = 0
        for b in range(nb):  # branch-free gather of the blocks that may hold candidates
            x = (br[b] - m) * a1
            cx[nc] = x
            ci[nc] = b
            nc += 1 if x > -1.0 else 0
        lo, nc = _tau(cx, ci, nc, kind, alpha, -1.0)
        lo = max(lo - 1e-9, -1.0)  # a margin for rounding: f(lo) >= 0 must hold
        nblk = 0
        for bb in range(nc):  # blocks kept by _tau: those with a maximum above lo
            if cx[bb] > lo:
                ci[nblk] = ci[bb]
                nblk += 1
        # candidates go behind the block list in the scratch arrays
        zr = z[c]
        base = nblk
        nc = base
        for bb in range(nblk):
            j0 = ci[bb] * blk
            for j in range(j0, j0 + blk):  # branch-free gather
                x = (zr[j] - m) * a1
                cx[nc] = x
                ci[nc] = j
                nc += 1 if x > lo else 0
        tau, ncand = _tau(cx[base:], ci[base:], nc - base, kind, alpha, lo)
        acc[:] = 0.0
        den = 0.0
        for jj in range(base, base + ncand):
            d = cx[jj] - tau
            if d > 0.0:
                p = _p(d, kind, r, ri)
                den += p
                acc[Dv] = p  # p in the inputs' dtype: float32 vectors are twice as wide
                pz = acc[Dv]
                vr = v[ci[jj]]
                for e in range(Dv):
                    acc[e] += pz * vr[e]
        sc = 1.0 / den if (kind == ENTGEN and den > 0.0) else 1.0
        for e in range(Dv):
            out[c, e] = acc[e] * sc
        mst[c] = m
        tst[c] = tau


@njit(fastmath=FM, cache=True, nogil=True)
def entmax_bwd(z, bmax, q, k, v, dout, mst, tst, dq, dk, dv, i0, kind, alpha, scale, sx, sp,
               sg, si, dqa):
    """Backward of ``entmax_fwd`` for one head, rows i0:i0+C (z, bmax as there): q (T, D),
    k (S, D), v (S, Dv), dout (T, Dv), m, tau (T,); writes dq rows (T, D) (times ``scale``),
    accumulates dk (S, D) (left unscaled: the caller multiplies by sm_scale), dv (S, Dv),
    over the support only. Scratch: sx, sp, sg (Sp,) float64, si (Sp,) int32, dqa (D + 2,)
    in the inputs' dtype (the row's dq sums there)."""
    C, Sp = z.shape
    nb = bmax.shape[1]
    blk = Sp // nb
    D = q.shape[1]
    Dv = v.shape[1]
    a1 = alpha - 1.0
    r = 1.0 / a1
    ri = _int_exp(r)
    es = r * (2.0 - alpha)
    ris = _int_exp(es)
    if dqa.shape[0] < D + 2 or sx.shape[0] < Sp or si.shape[0] < Sp:
        raise ValueError("entmax_bwd: scratch arrays too small")
    dqa[0] = 0.0
    zero = dqa[0]
    for c in range(C):
        i = i0 + c
        m = mst[i]
        tau = tst[i]
        zr = z[c]
        br = bmax[c]
        ns = 0
        zlo = m + tau / a1 - 1e-9  # a margin: the exact test is on d below
        for b in range(nb):
            if br[b] > zlo:  # the block may hold support
                for j in range(b * blk, b * blk + blk):  # branch-free gather
                    d = (zr[j] - m) * a1 - tau
                    sx[ns] = d
                    si[ns] = j
                    ns += 1 if d > 0.0 else 0
        den = 0.0
        for jj in range(ns):
            p = _p(sx[jj], kind, r, ri)
            sp[jj] = p
            den += p
        if kind == ENTGEN and den > 0.0:
            for jj in range(ns):
                sp[jj] /= den
        ssum = 0.0
        sdot = 0.0
        do = dout[i]
        # s = p^(2 - alpha) = d^(r (2 - alpha)) den^(alpha - 2): one pow per row, not per entry
        cs = math.pow(den, alpha - 2.0) if (kind == ENTGEN and den > 0.0) else 1.0
        for jj in range(ns):
            if kind == SPARSEMAX:
                s = 1.0
            elif kind == ENT15:
                s = sx[jj]  # sqrt(p) = d
            else:
                s = _pos_pow(sx[jj], es, ris) * cs
            sx[jj] = s
            vr = v[si[jj]]
            g = zero  # the inputs' dtype: float32 vectors are twice as wide
            for e in range(Dv):
                g += do[e] * vr[e]
            sg[jj] = g
            ssum += s
            sdot += s * g
        mean = sdot / ssum if ssum > 0.0 else 0.0
        dqa[:] = 0.0
        qr = q[i]
        for jj in range(ns):
            j = si[jj]
            dqa[D] = sx[jj] * (sg[jj] - mean)  # dz_j, cast to the inputs' dtype
            dqa[D + 1] = sp[jj]
            gz = dqa[D]
            pz = dqa[D + 1]
            kr = k[j]
            dkr = dk[j]
            for e in range(D):
                dqa[e] += gz * kr[e]
                dkr[e] += gz * qr[e]
            dvr = dv[j]
            for e in range(Dv):
                dvr[e] += pz * do[e]
        for e in range(D):
            dq[i, e] = dqa[e] * scale


# ---------------------------------------------------------------- short rows, whole heads

@njit(fastmath=FM, cache=True, inline="always")
def _row_scores(q, kt, bh, i, sv, scale, slope, ipos, z):
    """z[:sv] = scale q_i . k_j - slope |ipos - j| for the keys j < sv of head bh; returns the
    row max. kt (BH, D, S) holds the keys transposed: the sum over d runs in a fixed order for
    every key (lanes are keys), so the bits do not depend on the vector width."""
    D = kt.shape[1]
    qr = q[bh, i]
    for j in range(sv):
        z[j] = 0.0
    for d in range(D):
        qd = qr[d]
        kr = kt[bh, d]
        for j in range(sv):
            z[j] += qd * kr[j]
    m = -np.inf
    for j in range(sv):
        zj = z[j] * scale - slope * abs(ipos - j)
        z[j] = zj
        m = max(m, z[j])
    return m


@njit(fastmath=FM, cache=True, nogil=True)
def short_fwd(q, kt, v, slopes, off, causal, kind, alpha, scale, out, mst, tst, bh0, bh1, z,
              cx, ci, acc):
    """alpha-entmax attention of heads bh0:bh1, every query row whole: q (BH, T, D), kt
    (BH, D, S) the keys transposed, v (BH, S, Dv), slopes (H,) ALiBi slopes of head bh % H
    (0: none); queries aligned to the end of the keys (``off`` = S - T). Writes out (BH, T, Dv)
    and the row statistics m, tau (BH, T). Scratch: z (S,) in the inputs' dtype, cx, ci (S,),
    acc (Dv + 1,). For rows short enough that the scores of a row are cheaper to compute here
    than to hand over from a matmul (training lengths)."""
    T = q.shape[1]
    S = kt.shape[2]
    Dv = v.shape[2]
    H = slopes.shape[0]
    a1 = alpha - 1.0
    r = 1.0 / a1
    ri = _int_exp(r)
    for bh in range(bh0, bh1):
        slope = slopes[bh % H]
        for i in range(T):
            sv = min(S, i + off + 1) if causal else S
            if sv <= 0:
                mst[bh, i] = 0.0
                tst[bh, i] = 0.0
                out[bh, i, :] = 0.0
                continue
            m = _row_scores(q, kt, bh, i, sv, scale, slope, i + off, z)
            nc = 0
            for j in range(sv):  # branch-free gather of the candidates x > -1
                x = (z[j] - m) * a1
                cx[nc] = x
                ci[nc] = j
                nc += 1 if x > -1.0 else 0
            tau, nc = _tau(cx, ci, nc, kind, alpha, -1.0)
            acc[:] = 0.0
            den = 0.0
            for jj in range(nc):
                d = cx[jj] - tau
                if d > 0.0:
                    p = _p(d, kind, r, ri)
                    den += p
                    acc[Dv] = p
                    pz = acc[Dv]
                    vr = v[bh, ci[jj]]
                    for e in range(Dv):
                        acc[e] += pz * vr[e]
            sc = 1.0 / den if (kind == ENTGEN and den > 0.0) else 1.0
            for e in range(Dv):
                out[bh, i, e] = acc[e] * sc
            mst[bh, i] = m
            tst[bh, i] = tau


@njit(fastmath=FM, cache=True, nogil=True)
def short_bwd(q, k, kt, v, dout, slopes, off, causal, kind, alpha, scale, mst, tst, dq, dk, dv,
              bh0, bh1, z, sx, sp, sg, si, dqa):
    """Backward of ``short_fwd`` for heads bh0:bh1 (a thread owns whole heads), k (BH, S, D)
    and kt its transpose: the scores recomputed as there, the support from the saved (m, tau);
    writes dq (BH, T, D) (times ``scale``), accumulates dk (BH, S, D) (unscaled: the caller
    multiplies by sm_scale) and dv (BH, S, Dv) over the support only. Scratch: z (S,) in the
    inputs' dtype, sx, sp, sg (S,) float64, si (S,) int32, dqa (D + 2,) in the inputs' dtype."""
    T = q.shape[1]
    D = q.shape[2]
    S = kt.shape[2]
    Dv = v.shape[2]
    H = slopes.shape[0]
    a1 = alpha - 1.0
    r = 1.0 / a1
    ri = _int_exp(r)
    es = r * (2.0 - alpha)
    ris = _int_exp(es)
    dqa[0] = 0.0
    zero = dqa[0]
    for bh in range(bh0, bh1):
        slope = slopes[bh % H]
        for i in range(T):
            sv = min(S, i + off + 1) if causal else S
            if sv <= 0:
                continue
            _row_scores(q, kt, bh, i, sv, scale, slope, i + off, z)
            m = mst[bh, i]
            tau = tst[bh, i]
            ns = 0
            for j in range(sv):  # branch-free gather of the support
                d = (z[j] - m) * a1 - tau
                sx[ns] = d
                si[ns] = j
                ns += 1 if d > 0.0 else 0
            den = 0.0
            for jj in range(ns):
                p = _p(sx[jj], kind, r, ri)
                sp[jj] = p
                den += p
            if kind == ENTGEN and den > 0.0:
                for jj in range(ns):
                    sp[jj] /= den
            cs = math.pow(den, alpha - 2.0) if (kind == ENTGEN and den > 0.0) else 1.0
            do = dout[bh, i]
            ssum = 0.0
            sdot = 0.0
            for jj in range(ns):
                if kind == SPARSEMAX:
                    s = 1.0
                elif kind == ENT15:
                    s = sx[jj]
                else:
                    s = _pos_pow(sx[jj], es, ris) * cs
                sx[jj] = s
                vr = v[bh, si[jj]]
                g = zero
                for e in range(Dv):
                    g += do[e] * vr[e]
                sg[jj] = g
                ssum += s
                sdot += s * g
            mean = sdot / ssum if ssum > 0.0 else 0.0
            dqa[:] = 0.0
            qr = q[bh, i]
            for jj in range(ns):
                j = si[jj]
                dqa[D] = sx[jj] * (sg[jj] - mean)
                dqa[D + 1] = sp[jj]
                gz = dqa[D]
                pz = dqa[D + 1]
                kr = k[bh, j]
                dkr = dk[bh, j]
                for e in range(D):
                    dqa[e] += gz * kr[e]
                    dkr[e] += gz * qr[e]
                dvr = dv[bh, j]
                for e in range(Dv):
                    dvr[e] += pz * do[e]
            for e in range(D):
                dq[bh, i, e] = dqa[e] * scale


# ---------------------------------------------------------------- top-k: each row's cut


@njit(fastmath=FM, cache=True, inline="always")
def _select(a, n, k):
    """The k-th largest of a[:n] (1 <= k <= n), by quickselect in place."""
    lo = 0
    hi = n - 1
    want = k - 1
    while lo < hi:
        pivot = a[(lo + hi) // 2]
        i = lo
        j = hi
        while i <= j:
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            return a[want]
    return a[lo]


@njit(fastmath=FM, cache=True, nogil=True)
def kth_largest(z, bmax, k, thr, cx):
    """Each row's k-th largest score (the cut of top-k softmax: the scores at or above it are
    kept), -inf where a row sees at most k keys (all are kept). z (C, Sp) scores, -inf where
    masked or padded; bmax (C, Sp // BLK) the key blocks' maxima; writes thr (C,). Scratch: cx
    (Sp,) float64. The k-th largest block maximum is a lower bound of the cut (k distinct
    scores reach it), so only the blocks whose maximum reaches it are searched."""
    C, Sp = z.shape
    nb = bmax.shape[1]
    blk = Sp // nb
    for c in range(C):
        br = bmax[c]
        zr = z[c]
        nf = 0
        for b in range(nb):
            x = br[b]
            cx[nf] = x
            nf += 1 if x > -np.inf else 0
        lo = _select(cx, nf, k) if nf >= k else -np.inf
        n = 0
        for b in range(nb):
            if br[b] >= lo and br[b] > -np.inf:
                for j in range(b * blk, b * blk + blk):
                    x = zr[j]
                    cx[n] = x
                    n += 1 if (x >= lo and x > -np.inf) else 0
        thr[c] = _select(cx, n, k) if n >= k else -np.inf
