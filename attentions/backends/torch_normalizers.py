"""Row normalizers in torch: threshold math, closed-form backward, public functions.

Layered as the ``entmax`` package is: core threshold math (``row_stats``), an
``autograd.Function`` with a closed-form backward, then the public function.

alpha-entmax over scores z (one row, masked entries at -inf):

    p_j = [(alpha - 1) * (z_j - m) - tau]_+ ** (1 / (alpha - 1)),   sum_j p_j = 1,

with m = max_j z_j (shift invariance keeps every intermediate in [-1, 0] near the support, so
logits of +-1e4 lose nothing). tau lies in [-1, -n^(1 - alpha)] for n visible entries.

- alpha = 2 (sparsemax) and alpha = 1.5: exact thresholds from the sorted top-k of each row,
  k grown 4x for the rows whose support fills it, then one Newton polish on the support.
- other alpha: Halley steps safeguarded by bisection inside the bracket, then Newton from the
  bracket's lower end: f(tau) = sum_j [x_j - tau]_+^r - 1 is convex and decreasing for
  r = 1/(alpha-1) >= 1, so Newton from the left converges monotonically, and once the support
  is fixed it is Newton on a smooth function (the exact polish).

Backward (Jacobian-vector product): with s_j = p_j^(2 - alpha) on the support and 0 elsewhere,
dz = s * (g - <s, g> / sum(s)). For softmax s = p; for top-k softmax s = p on the kept set.

Half precision is computed in float32 and returned in the input dtype; float64 stays float64.
"""

from __future__ import annotations

import torch

from ..normalizer import Normalizer

TOPK_START = 128  # first k of the exact top-k threshold search


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shifted(z: torch.Tensor):
    """Row max m (0 for rows with nothing visible) and a mask of such dead rows."""
    m = z.amax(dim=-1, keepdim=True)
    dead = torch.isneginf(m)
    return torch.where(dead, torch.zeros_like(m), m), dead


def _tau_from_sorted(xs: torch.Tensor, alpha: float):
    """Exact tau for alpha in {1.5, 2} from rows sorted descending, x = (alpha-1)(z-m) <= 0.

    Returns (tau, support size). Entries below -1 are never in the support (tau >= -1), so
    -inf is clamped to -2 to keep the running sums finite.
    """
    xs = xs.clamp_min(-2.0)
    k = torch.arange(1, xs.shape[-1] + 1, device=xs.device, dtype=xs.dtype)
    cs = xs.cumsum(-1)
    if alpha == 2.0:
        tau_k = (cs - 1.0) / k
        support = (xs > tau_k).sum(-1, keepdim=True)
    else:  # alpha = 1.5, p = (x - tau)^2
        mean = cs / k
        ss = (xs * xs).cumsum(-1) - cs * mean  # sum of squared deviations of the top k
        tau_k = mean - torch.sqrt(((1.0 - ss) / k).clamp_min(0.0))
        support = (tau_k <= xs).sum(-1, keepdim=True)
    tau = tau_k.gather(-1, (support - 1).clamp_min(0))
    return tau, support


def _polish(x: torch.Tensor, tau: torch.Tensor, r: float, steps: int) -> torch.Tensor:
    """Newton steps on f(tau) = sum [x - tau]_+^r - 1, from a tau at or left of the root."""
    for _ in range(steps):
        d = (x - tau).clamp_min(0.0)
        f = d.pow(r).sum(-1, keepdim=True) - 1.0
        if r == 1.0:
            df = (d > 0).sum(-1, keepdim=True).to(x.dtype)
        else:
            df = r * d.pow(r - 1.0).sum(-1, keepdim=True)
        tau = tau + torch.where(df > 0, f / df.clamp_min(1e-30), torch.zeros_like(f))
    return tau


def _tau_exact(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Exact tau for alpha in {1.5, 2}: top-k thresholds, k x4 for unsolved rows."""
    n = x.shape[-1]
    shape = x.shape
    rows = x.reshape(-1, n)
    tau = torch.empty(rows.shape[0], 1, device=x.device, dtype=x.dtype)
    todo = torch.arange(rows.shape[0], device=x.device)
    k = min(n, TOPK_START)
    while todo.numel():
        sub = rows.index_select(0, todo)
        xs = sub.topk(k, dim=-1).values if k < n else sub.sort(dim=-1, descending=True).values
        t, support = _tau_from_sorted(xs, alpha)
        done = (support < k).squeeze(-1) | (k >= n)
        tau[todo[done]] = t[done]
        todo = todo[~done]
        k = min(n, 4 * k)
    tau = tau.reshape(*shape[:-1], 1)
    # closed forms lose digits to cancellation on wide supports: polish from the left
    r = 1.0 / (alpha - 1.0)
    return _polish(x, tau - 4 * torch.finfo(x.dtype).eps, r, 2)


def _tau_bisect(x: torch.Tensor, alpha: float, halley_iters: int = 8, newton_iters: int = 40):
    """tau for any alpha in (1, 2]: safeguarded Halley/bisection, then Newton from the left."""
    r = 1.0 / (alpha - 1.0)
    n = torch.isfinite(x).sum(-1, keepdim=True).clamp_min(1).to(x.dtype)
    lo = torch.full_like(n, -1.0)
    hi = -n.pow(1.0 - alpha)
    tau = (lo + hi) / 2
    for _ in range(halley_iters):
        d = (x - tau).clamp_min(0.0)
        pos = d > 0
        f = d.pow(r).sum(-1, keepdim=True) - 1.0
        f1 = -r * torch.where(pos, d.pow(r - 1.0), 0.0).sum(-1, keepdim=True)
        f2 = r * (r - 1.0) * torch.where(pos, d.pow(r - 2.0), 0.0).sum(-1, keepdim=True)
        lo = torch.where(f >= 0, tau, lo)
        hi = torch.where(f < 0, tau, hi)
        step = tau - 2 * f * f1 / (2 * f1 * f1 - f * f2)
        ok = torch.isfinite(step) & (step > lo) & (step < hi)
        tau = torch.where(ok, step, (lo + hi) / 2)
    tau = lo  # f(lo) >= 0: Newton from here increases monotonically to the root
    tol = 4 * torch.finfo(x.dtype).eps
    for i in range(newton_iters):
        new = _polish(x, tau, r, 1).minimum(hi)
        moved = (new - tau).abs().amax() if new.numel() else 0.0
        tau = new
        if i % 4 == 3 and float(moved) <= tol:
            break
    return tau


def row_stats(z: torch.Tensor, norm: Normalizer, method: str = "auto"):
    """Per-row statistics (m, t, thr) from which ``probs`` rebuilds p exactly.

    z: (..., n) scores in the compute dtype, -inf where masked. m: the row max; t: tau
    (entmax) or the log-normalizer of the shifted scores (softmax, top-k); thr: the k-th largest
    score (top-k) or None.
    """
    m, dead = _shifted(z)
    thr = None
    if norm.kind == "entmax":
        x = (z - m) * (norm.alpha - 1.0)
        exact = norm.alpha in (1.5, 2.0) and method != "bisect"
        t = _tau_exact(x, norm.alpha) if exact else _tau_bisect(x, norm.alpha)
        t = torch.where(dead, torch.zeros_like(t), t)
        return m, t, thr
    if norm.kind == "topk":
        k = min(norm.k, z.shape[-1])
        thr = z.topk(k, dim=-1).values[..., -1:]
        z = torch.where(z >= thr, z, float("-inf"))
    t = torch.logsumexp(z - m, dim=-1, keepdim=True)
    t = torch.where(dead, torch.full_like(t, float("inf")), t)
    return m, t, thr


def probs(z: torch.Tensor, norm: Normalizer, m, t, thr) -> torch.Tensor:
    """p from the scores and the row statistics of ``row_stats``."""
    if norm.kind == "entmax":
        d = ((z - m) * (norm.alpha - 1.0) - t).clamp_min(0.0)
        if norm.alpha == 2.0:
            return d
        if norm.alpha == 1.5:
            return d * d
        return d.pow(1.0 / (norm.alpha - 1.0))
    p = torch.exp(z - m - t)
    if norm.kind == "topk":
        p = torch.where(z >= thr, p, torch.zeros_like(p))
    return p


def sensitivity(p: torch.Tensor, norm: Normalizer) -> torch.Tensor:
    """s = dp/dz's diagonal factor: p^(2-alpha) on the support (entmax), p (softmax, top-k)."""
    if norm.kind != "entmax":
        return p
    if norm.alpha == 2.0:
        return (p > 0).to(p.dtype)
    if norm.alpha == 1.5:
        return p.sqrt()
    return torch.where(p > 0, p.pow(2.0 - norm.alpha), torch.zeros_like(p))


def vjp(s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dz = s * (g - <s, g> / sum(s)), row-wise; rows with s = 0 everywhere give 0."""
    den = s.sum(-1, keepdim=True)
    mean = (s * g).sum(-1, keepdim=True) / torch.where(den > 0, den, torch.ones_like(den))
    return s * (g - mean)


class NormalizerFunction(torch.autograd.Function):
    """p = normalizer(z) along the last dim, with the closed-form backward."""

    @staticmethod
    def forward(ctx, z, norm: Normalizer, method: str):
        cdt = compute_dtype(z.dtype)
        zc = z.to(cdt)
        p = probs(zc, norm, *row_stats(zc, norm, method))
        if norm.kind == "entmax" and norm.alpha not in (1.5, 2.0):
            p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(cdt).tiny)
        ctx.norm = norm
        ctx.save_for_backward(p)
        return p.to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        dz = vjp(sensitivity(p, ctx.norm), g.to(p.dtype))
        return dz.to(g.dtype), None, None


def normalize(z: torch.Tensor, norm: Normalizer, dim: int = -1, method: str = "auto"):
    z = z.transpose(dim, -1)
    return NormalizerFunction.apply(z, norm, method).transpose(dim, -1)


def entmax(z: torch.Tensor, alpha: float = 1.5, dim: int = -1, method: str = "auto"):
    """alpha-entmax along ``dim``; ``method="bisect"`` forces the generic solver."""
    return normalize(z, Normalizer("entmax", alpha=float(alpha)), dim, method)


def sparsemax(z: torch.Tensor, dim: int = -1):
    return entmax(z, 2.0, dim)


def entmax15(z: torch.Tensor, dim: int = -1):
    return entmax(z, 1.5, dim)
