"""The numba backend: fused sparse alpha-entmax attention on CPU (and softmax and top-k softmax
beside it).

Work is cut into items (batch*head, block of C query rows), dealt to ``torch.get_num_threads()``
worker threads. Per item: the scores z = sm_scale q k^T of the keys the block may see are
one BLAS call into a per-thread buffer (C x S at most, ``CHUNK_ELEMS``), torch adds the bias,
the causal mask and the row max (its reductions vectorize), and a numba kernel
(``numba_kernels.entmax_fwd``, GIL released) does the rest of each row: the threshold tau on
the candidates x > -1 only, then the weighted sum over the support only. Softmax keeps exp,
sums and P @ V in torch. Memory: inputs, output, per-row (m, tau) and C x S floats plus
O(S) scratch per thread; no (T, S) buffer.

Why threads of our own: torch's OpenMP workers spin after each parallel region, and a numba
parallel region right after a torch matmul then ran 2-10x slower (NUMBA_NOTES.md). Each worker
sets torch to one thread (a thread-local OpenMP/MKL setting), so one pool does all the work.

The backward recomputes each score block, finds the support from the saved (m, tau) and uses
only it: s_j = p_j^(2-alpha), dz_j = s_j (dp_j - <s, dp> / sum s), dp_j = dout_i . v_j.

numba is imported only inside ``_kernels()``, so importing the package stays numba-free.
Inputs of float64 compute in float64, everything else in float32 (half precision is upcast).
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import torch

from .. import knobs
from ..normalizer import Alibi, Normalizer

NAME = "numba"

#: elements of one score block (override: the knob ``numba_chunk_elems``)
CHUNK_ELEMS = 1 << 22
#: most query rows per block: causal blocks compute their upper triangle for nothing
MAX_ROWS = 128
#: keys per block of the block maxima that let the kernels skip blocks without support
BLK = 32
#: most keys of the rows that the short kernels take whole (entmax family, no dense bias):
#: scores, threshold and sums of a head in one numba call, no matmul handed over per block
SHORT_KEYS = 256


def usable() -> bool:
    return importlib.util.find_spec("numba") is not None


#: the normalizer kinds the kernels compute (an allow-list: any other goes elsewhere)
KINDS = frozenset({"softmax", "entmax", "topk"})


def supports(norm: Normalizer, device, bias=None) -> bool:
    if torch.device(device).type != "cpu" or norm.kind not in KINDS:
        return False
    if isinstance(bias, torch.Tensor) and bias.requires_grad:
        return False
    return bias is None or isinstance(bias, (Alibi, torch.Tensor))


#: fewest keys at which ``auto`` takes the numba kernels over the torch backend. The entmax
#: family at every length: at training shapes of the quick profile (B=32, H=4, T=67, D=16, one
#: thread) the short kernels take 8.6 ms per forward+backward for alpha=1.5 and 5.7 for
#: sparsemax, the torch backend 62 and 46 (2-core EPYC, Zen 3). Softmax and top-k under a bias
#: from 256 keys on: below, the torch backend's one SDPA call with a float mask is faster (6 ms
#: against 22 for its chunked loop at those shapes; evaluating 100 flip-flop samples at 128
#: tokens: 0.1 s against 0.5 for numba softmax, 0.5 against 1.4 for top-k), from 256 on numba
#: (1.1 against 1.6 s, 1.4 against 2.5) and then by 3-25x.
MIN_KEYS = {"entmax": 0, "softmax": 256, "topk": 256}


def preferred(norm: Normalizer, device, bias=None, size=None) -> bool:
    """Whether ``auto`` should pick this backend for a call of shape ``size`` = (B, H, T, S):
    not for softmax without a bias (SDPA is faster on CPU, NUMBA_NOTES.md) nor for short
    rows (``MIN_KEYS``)."""
    if not supports(norm, device, bias) or (norm.kind == "softmax" and bias is None):
        return False
    return size is None or size[-1] >= MIN_KEYS.get(norm.kind, 0)


def _kernels():
    from . import numba_kernels

    return numba_kernels


def _kind(norm: Normalizer) -> int:
    if norm.kind == "softmax":
        return 0
    if norm.kind == "topk":
        return 4
    return {2.0: 1, 1.5: 2}.get(float(norm.alpha), 3)


def chunk_rows(S: int, T: int) -> int:
    """Query rows per work item: at most MAX_ROWS, and a score block of CHUNK_ELEMS."""
    budget = knobs.current().numba_chunk_elems or CHUNK_ELEMS
    return max(1, min(MAX_ROWS, T, budget // max(1, S + BLK)))


class _Ctx:
    """What the kernels need besides the tensors, for one call."""

    def __init__(self, q, k, norm, causal, bias, sm_scale):
        B, H, T, _ = q.shape
        S = k.shape[2]
        self.B, self.H, self.T, self.S = B, H, T, S
        self.off = S - T
        self.causal = bool(causal)
        self.kind = _kind(norm)
        self.alpha = float(norm.alpha) if norm.kind == "entmax" else 1.0
        self.k = int(norm.k) if norm.kind == "topk" else 0
        self.scale = float(sm_scale)
        self.rows = chunk_rows(S, T)
        self.dense = bias if isinstance(bias, torch.Tensor) else None
        slopes = bias.slopes if isinstance(bias, Alibi) else torch.zeros(H)
        self.slopes = [float(x) for x in slopes.detach().to(torch.float64).expand(H)]
        self.pad = -(-S // BLK) * BLK  # key length rounded up to whole key blocks

    def ar(self, cdt):
        if getattr(self, "_ar", None) is None or self._ar.dtype != cdt:
            self._ar = torch.arange(self.S, dtype=cdt)
        return self._ar

    def dist_buf(self, cdt):
        """A C x S buffer of the calling thread (ALiBi distances)."""
        import threading

        tl = self.__dict__.setdefault("_tl", threading.local())
        if getattr(tl, "buf", None) is None or tl.buf.dtype != cdt:
            tl.buf = torch.empty(self.rows * self.pad, dtype=cdt)
        return tl.buf

    def s_vis(self, i1: int) -> int:
        return max(0, min(self.S, i1 + self.off)) if self.causal else self.S

    def scores(self, qc, kc, bh, i0, i1, cdt, buf, blocks: bool):
        """The scores of queries i0:i1 of head bh over the keys they may see, in ``buf``:
        z (C, Sp) with Sp = Sv rounded up to whole key blocks, bias added, -inf where masked
        or padded; the row max m (C,); with ``blocks`` also the key blocks' maxima (C, Sp/BLK).
        Returns (z, Sv, m, bmax); Sv = 0 when the block sees no key."""
        sv = self.s_vis(i1)
        C = i1 - i0
        sp = -(-sv // BLK) * BLK
        z = buf[: C * sp].view(C, sp)
        if sv == 0:
            return z, 0, None, None
        zv = z[:, :sv]
        torch.addmm(zv, qc[bh, i0:i1], kc[bh, :sv].t(), beta=0.0, alpha=self.scale, out=zv)
        if sp > sv:
            z[:, sv:] = float("-inf")
        if self.dense is not None:
            b = torch.broadcast_to(self.dense.to(cdt), (self.B, self.H, self.T, self.S))
            zv += b[bh // self.H, bh % self.H, i0:i1, :sv]
        slope = self.slopes[bh % self.H]
        ipos = torch.arange(i0 + self.off, i1 + self.off, dtype=cdt)[:, None]  # (C, 1)
        if slope != 0.0:  # -slope |i - j|, the distance built in a per-thread buffer
            dist = self.dist_buf(cdt)[: C * sv].view(C, sv)
            torch.sub(ipos, self.ar(cdt)[:sv], out=dist).abs_()
            zv.sub_(dist, alpha=slope)
        if self.causal:
            j0 = max(0, min(sv, i0 + self.off + 1))
            if j0 < sv:
                z[:, j0:sv].masked_fill_(torch.arange(j0, sv, dtype=cdt) > ipos, float("-inf"))
        if not blocks:
            return z, sv, z.amax(1), None
        bmax = z.view(C, sp // BLK, BLK).amax(-1)  # (C, Sp / BLK)
        return z, sv, bmax.amax(1), bmax


def _flat(x, cdt):
    B, H, T, D = x.shape
    return x.detach().to(cdt).reshape(B * H, T, D).contiguous()


_POOL: list = [None, 0, 0]  # executor, its size, the process that made it


def _run(jobs):
    """Runs ``jobs`` (callables of no argument) on worker threads, each with torch at one
    thread (a thread-local OpenMP / MKL setting). The numba kernels release the GIL, the
    matmuls too: one pool of threads does all the work, none spins against another."""
    n = len(jobs)
    if n == 1:
        jobs[0]()
        return
    from concurrent.futures import ThreadPoolExecutor

    main = torch.get_num_threads()
    if _POOL[0] is None or _POOL[1] < n or _POOL[2] != os.getpid():  # (a fork has no threads)
        if _POOL[0] is not None and _POOL[2] == os.getpid():
            _POOL[0].shutdown()
        _POOL[:] = [ThreadPoolExecutor(n, thread_name_prefix="numba-attn"), n, os.getpid()]

    def one(job):
        torch.set_num_threads(1)
        job()

    try:
        for f in [_POOL[0].submit(one, job) for job in jobs]:
            f.result()
    finally:
        torch.set_num_threads(main)  # threads started later read this default: keep it


def _workers(n_items: int) -> int:
    return max(1, min(torch.get_num_threads(), n_items))


def _items(c) -> list:
    """(head, first query row) of every work item, in an order that deals every thread a
    similar mix of short (early, causal) and long rows."""
    return [(bh, i0) for i0 in range(0, c.T, c.rows) for bh in range(c.B * c.H)]


def _exp_kind(c) -> bool:
    """softmax or top-k softmax: exp and sums in torch (after the top-k cut)."""
    return c.kind in (0, 4)


def _short(c) -> bool:
    """Whether a call runs on the short kernels: entmax family, no dense bias, short rows."""
    return not _exp_kind(c) and c.dense is None and c.S <= SHORT_KEYS


def _head_ranges(BH: int) -> list[tuple[int, int]]:
    """Whole heads per worker thread, in contiguous ranges (the bits do not depend on them)."""
    W = _workers(BH)
    cuts = [BH * w // W for w in range(W + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _short_forward(c, qc, kc, vc, cdt):
    K = _kernels()
    BH, T, Dv = qc.shape[0], c.T, vc.shape[2]
    kt = kc.transpose(1, 2).contiguous()  # (BH, D, S)
    out = torch.zeros(BH, T, Dv, dtype=cdt)
    m = torch.zeros(BH, T, dtype=torch.float64)
    t = torch.zeros(BH, T, dtype=torch.float64)
    slopes = np.asarray(c.slopes, np.float64)
    args = (qc.numpy(), kt.numpy(), vc.numpy(), slopes, c.off, c.causal, c.kind, c.alpha,
            c.scale, out.numpy(), m.numpy(), t.numpy())

    def job(a, b):
        z = np.empty(c.S, qc.numpy().dtype)
        cx, ci = np.empty(c.S, np.float64), np.empty(c.S, np.int32)
        K.short_fwd(*args, a, b, z, cx, ci, np.empty(Dv + 1, z.dtype))

    _run([lambda a=a, b=b: job(a, b) for a, b in _head_ranges(BH)])
    return out, m, t


def _short_backward(c, qc, kc, vc, m, t, do):
    K = _kernels()
    D = qc.shape[2]
    dq, dk, dv = torch.zeros_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)
    kt = kc.transpose(1, 2).contiguous()
    slopes = np.asarray(c.slopes, np.float64)
    args = (qc.numpy(), kc.numpy(), kt.numpy(), vc.numpy(), do.numpy(), slopes, c.off,
            c.causal, c.kind, c.alpha, c.scale, m.numpy(), t.numpy(), dq.numpy(), dk.numpy(),
            dv.numpy())

    def job(a, b):
        z = np.empty(c.S, qc.numpy().dtype)
        sx, sp, sg = (np.empty(c.S, np.float64) for _ in range(3))
        K.short_bwd(*args, a, b, z, sx, sp, sg, np.empty(c.S, np.int32),
                    np.empty(D + 2, z.dtype))

    _run([lambda a=a, b=b: job(a, b) for a, b in _head_ranges(qc.shape[0])])
    return dq, dk.mul_(c.scale), dv


class NumbaAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, norm, causal, bias, sm_scale):
        K = _kernels()
        c = _Ctx(q, k, norm, causal, bias, sm_scale)
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        qc, kc, vc = _flat(q, cdt), _flat(k, cdt), _flat(v, cdt)
        if _short(c):
            out, m, t = _short_forward(c, qc, kc, vc, cdt)
            ctx.c = c
            ctx.save_for_backward(qc, kc, vc, m, t)
            return out.reshape(c.B, c.H, c.T, vc.shape[2]).to(q.dtype)
        BH, T, Dv = qc.shape[0], c.T, vc.shape[2]
        out = torch.zeros(BH, T, Dv, dtype=cdt)
        m = torch.zeros(BH, T, dtype=torch.float64)  # row max
        t = torch.zeros(BH, T, dtype=torch.float64)  # tau (entmax), log-sum (softmax)
        cut = torch.full((BH, T), -np.inf, dtype=torch.float64)  # top-k: the row's cut
        vn, on, mn, tn = vc.numpy(), out.numpy(), m.numpy(), t.numpy()
        items = _items(c)
        W = _workers(len(items))
        softmax = _exp_kind(c)

        def job(w):
            buf = torch.empty(c.rows * c.pad, dtype=cdt)
            cx = np.empty(c.pad + c.pad // BLK + 1, np.float64)
            ci = np.empty(c.pad + c.pad // BLK + 1, np.int32)
            acc = np.empty(Dv + 1, on.dtype)
            for bh, i0 in items[w::W]:
                i1 = min(T, i0 + c.rows)
                z, sv, mx, bmax = c.scores(qc, kc, bh, i0, i1, cdt, buf, blocks=c.kind != 0)
                if sv == 0:
                    continue
                if c.kind == 4:
                    K.kth_largest(z.numpy(), bmax.numpy(), c.k, cut.numpy()[bh, i0:i1], cx)
                    z.masked_fill_(z < cut[bh, i0:i1, None].to(cdt), float("-inf"))
                if softmax:  # torch's exp vectorizes, numba's does not
                    live = torch.isfinite(mx)
                    mx = torch.where(live, mx, torch.zeros_like(mx))
                    z.sub_(mx[:, None]).exp_()
                    lsum = z.sum(1)
                    torch.mm(z[:, :sv], vc[bh, :sv], out=out[bh, i0:i1])
                    out[bh, i0:i1] /= torch.where(live, lsum, torch.ones_like(lsum))[:, None]
                    m[bh, i0:i1] = mx
                    t[bh, i0:i1] = torch.where(live, lsum.log(), torch.full_like(lsum, np.inf))
                else:
                    K.entmax_fwd(z.numpy(), bmax.numpy(), mx.numpy(), vn[bh], on[bh, i0:i1],
                                 mn[bh, i0:i1], tn[bh, i0:i1], c.kind, c.alpha, cx, ci, acc)

        _run([lambda w=w: job(w) for w in range(W)])
        ctx.c = c
        ctx.save_for_backward(qc, kc, vc, m, t, cut)
        return out.reshape(c.B, c.H, T, Dv).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        K = _kernels()
        c = ctx.c
        qc, kc, vc, m, t, *cut = ctx.saved_tensors
        cdt = qc.dtype
        BH, T, S, D, Dv = qc.shape[0], c.T, c.S, qc.shape[2], vc.shape[2]
        do = dout.detach().to(cdt).reshape(BH, T, Dv).contiguous()
        if _short(c):
            dq, dk, dv = _short_backward(c, qc, kc, vc, m, t, do)
            B, H = c.B, c.H
            return (dq.reshape(B, H, T, D).to(dout.dtype), dk.reshape(B, H, S, D).to(dout.dtype),
                    dv.reshape(B, H, S, Dv).to(dout.dtype), None, None, None, None)
        dq = torch.zeros_like(qc)
        dk = torch.zeros_like(kc)
        dv = torch.zeros_like(vc)
        items = _items(c)
        W = _workers(len(items))
        if BH % W == 0:  # whole heads per thread: dk, dv rows are never shared
            parts = [[it for it in items if it[0] % W == w] for w in range(W)]
            acc = [(dk, dv)] * W
        else:  # threads share heads: private dk, dv, summed at the end
            parts = [items[w::W] for w in range(W)]
            acc = [(dk, dv)] + [(torch.zeros_like(kc), torch.zeros_like(vc)) for _ in range(W - 1)]
        qn, kn, vn, don, mn, tn, dqn = (x.numpy() for x in (qc, kc, vc, do, m, t, dq))
        softmax = _exp_kind(c)
        mt = (m + t).to(cdt)  # softmax: p = exp(z - m - log l)

        def job(w):
            dkw, dvw = acc[w]
            dkn, dvn = dkw.numpy(), dvw.numpy()
            buf = torch.empty(c.rows * c.pad, dtype=cdt)
            if softmax:
                gbuf = torch.empty(c.rows * c.pad, dtype=cdt)
            else:
                sx, sp, sg = (np.empty(c.pad, np.float64) for _ in range(3))
                si = np.empty(c.pad, np.int32)
                dqa = np.empty(D + 2, qn.dtype)
            for bh, i0 in parts[w]:
                i1 = min(T, i0 + c.rows)
                z, sv, _, bmax = c.scores(qc, kc, bh, i0, i1, cdt, buf, blocks=not softmax)
                if sv == 0:
                    continue
                if softmax:
                    C = i1 - i0
                    z = z[:, :sv]
                    if c.kind == 4:  # the forward's cut (the same scores, so the same keys)
                        z.masked_fill_(z < cut[0][bh, i0:i1, None].to(cdt), float("-inf"))
                    g = torch.mm(do[bh, i0:i1], vc[bh, :sv].t(),
                                 out=gbuf[: C * sv].view(C, sv))  # dp (C, Sv)
                    z.sub_(mt[bh, i0:i1, None]).exp_()  # p; masked: exp(-inf) = 0
                    g.sub_((z * g).sum(1, keepdim=True)).mul_(z)  # dz = p (dp - <p, dp>)
                    torch.mm(g, kc[bh, :sv], out=dq[bh, i0:i1])
                    dkw[bh, :sv].addmm_(g.t(), qc[bh, i0:i1])
                    dvw[bh, :sv].addmm_(z.t(), do[bh, i0:i1])
                else:
                    K.entmax_bwd(z.numpy(), bmax.numpy(), qn[bh], kn[bh], vn[bh], don[bh],
                                 mn[bh], tn[bh], dqn[bh], dkn[bh], dvn[bh], i0, c.kind, c.alpha,
                                 c.scale, sx, sp, sg, si, dqa)

        _run([lambda w=w: job(w) for w in range(W)])
        for dkw, dvw in acc[1:]:
            if dkw is not dk:
                dk += dkw
                dv += dvw
        if softmax:
            dq.mul_(c.scale)  # dz k sm_scale (the entmax kernel scales dq itself)
        dk.mul_(c.scale)  # dz^T q sm_scale
        B, H = c.B, c.H
        return (dq.reshape(B, H, T, D).to(dout.dtype), dk.reshape(B, H, S, D).to(dout.dtype),
                dv.reshape(B, H, S, Dv).to(dout.dtype), None, None, None, None)


def attention(q, k, v, *, norm: Normalizer, causal: bool = True, bias=None, sm_scale=None):
    """Normalized attention (see ``attentions.backends``), computed by the numba kernels."""
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    if isinstance(bias, torch.Tensor) and bias.requires_grad:
        raise ValueError("a learned dense bias is not supported; pass a constant bias or Alibi")
    if norm.kind not in KINDS:
        raise ValueError(f"the numba backend has no {norm.kind} kernel; use backend='torch'")
    return NumbaAttention.apply(q, k, v, norm, causal, bias, sm_scale)
