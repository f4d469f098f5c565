"""The torch backend: the reference, on any device, and the path ``auto`` takes for every
call that no faster backend takes or prefers (see ``attentions.backends.resolve``).

Queries run in chunks, so no (B, H, T, S) tensor exists. Memory: the inputs and the output,
O(B*H*(T+S)*D), plus per-row statistics O(B*H*T), plus one chunk of scores and its few
temporaries, O(chunk_elems) with chunk = max(1, chunk_elems // (B*H*S)) query rows. At a fixed
chunk budget memory is therefore linear in T. The backward recomputes the scores chunk by chunk
from the saved row statistics (as flash attention does), so training memory is linear in T too.

softmax without a bias uses ``scaled_dot_product_attention`` (flash / memory-efficient kernels).
Scores, statistics and probabilities are float32 for float32/16/bf16 inputs (matmuls in the
input dtype accumulate in float32) and float64 for float64 inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import knobs
from ..normalizer import Alibi, Normalizer
from . import torch_normalizers as N

NAME = "torch"

#: elements of the score chunk, per device type (override: the knob ``torch_chunk_elems``)
CHUNK_ELEMS = {"cuda": 1 << 27, "cpu": 1 << 24}
#: on CPU, float32 softmax and top-k with at most this many scores per head (T x S) run as one
#: SDPA call with the bias, the causal mask and the top-k cut in a float mask (H x T x S):
#: one fused kernel and its backward instead of the chunked loop (training lengths)
SDPA_MASK_ELEMS = 1 << 16

#: on CUDA, softmax with at most this many scores per head (T x S) runs as the same one SDPA
#: call with a dense float mask (bias and causality): at training lengths that beat
#: FlexAttention with ALiBi in its score_mod (H200, 2026-12-01, bf16 forward+backward replayed
#: from a CUDA graph: 0.258 against 0.514 ms at B=128 H=16 T=64 D=64, 0.161 against 0.172 at
#: B=32 H=8 T=256), and it compiles in the model where FlexAttention's lowering failed (T=131);
#: past it, FlexAttention (no T x S mask in memory) wins
CUDA_SDPA_MASK_ELEMS = 1 << 16


def masked_sdpa(norm: Normalizer, device, bias, T: int, S: int, dtype=None,
                causal: bool = True) -> bool:
    """Whether ``attention`` computes this call as one SDPA call with a dense float mask."""
    if (bias is not None and not isinstance(bias, Alibi)) or (causal and T > S):
        return False
    if torch.device(device).type == "cuda":
        return (norm.kind == "softmax" and T * S <= CUDA_SDPA_MASK_ELEMS
                and dtype != torch.float64)  # float64 stays on the chunked reference path
    return (dtype in (None, torch.float32) and norm.kind in ("softmax", "topk")
            and T * S <= SDPA_MASK_ELEMS)


def usable() -> bool:
    return True


#: the normalizer kinds ``torch_normalizers`` computes (an allow-list, as every backend's)
KINDS = frozenset({"softmax", "entmax", "topk"})


def supports(norm: Normalizer, device, bias=None) -> bool:
    return norm.kind in KINDS


def chunk_rows(B: int, H: int, S: int, device: torch.device) -> int:
    budget = knobs.current().torch_chunk_elems or CHUNK_ELEMS.get(device.type, 1 << 24)
    return max(1, budget // max(1, B * H * S))


def _scores(q_c, kc, i0, i1, T, S, causal, bias, sm_scale, cdt):
    """Scores of queries i0:i1 against the keys they may see: (B, H, i1-i0, S_vis), -inf masked.
    ``kc`` is k in the compute dtype."""
    off = S - T
    s_vis = min(S, i1 + off) if causal else S
    z = torch.matmul(q_c.to(cdt), kc[:, :, :s_vis].transpose(-1, -2)) * sm_scale
    if isinstance(bias, Alibi):
        z = z + bias.tile(i0, i1, 0, s_vis, off, z.device, cdt)
    elif bias is not None:
        b = bias.expand(*bias.shape[:-2], T, S) if bias.dim() >= 2 else bias
        z = z + b[..., i0:i1, :s_vis].to(cdt)
    if causal:
        qi = torch.arange(i0, i1, device=z.device)[:, None] + off
        kj = torch.arange(s_vis, device=z.device)[None, :]
        z = z.masked_fill(kj > qi, float("-inf"))
    return z, s_vis


class ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, norm, causal, bias, sm_scale):
        B, H, T, D = q.shape
        S = k.shape[2]
        cdt = N.compute_dtype(q.dtype)
        rows = chunk_rows(B, H, S, q.device)
        out = torch.empty(B, H, T, v.shape[-1], device=q.device, dtype=q.dtype)
        m = torch.empty(B, H, T, 1, device=q.device, dtype=cdt)
        t = torch.empty_like(m)
        thr = torch.empty_like(m) if norm.kind == "topk" else None
        kc, vc = k.to(cdt), v.to(cdt)
        for i0 in range(0, T, rows):
            i1 = min(T, i0 + rows)
            z, s_vis = _scores(q[:, :, i0:i1], kc, i0, i1, T, S, causal, bias, sm_scale, cdt)
            mc, tc, thc = N.row_stats(z, norm)
            p = N.probs(z, norm, mc, tc, thc)
            if norm.kind == "entmax" and norm.alpha not in (1.5, 2.0):
                den = p.sum(-1, keepdim=True)
                p = p / den.clamp_min(torch.finfo(cdt).tiny)
            out[:, :, i0:i1] = torch.matmul(p, vc[:, :, :s_vis]).to(q.dtype)
            m[:, :, i0:i1], t[:, :, i0:i1] = mc, tc
            if thr is not None:
                thr[:, :, i0:i1] = thc
        ctx.norm, ctx.causal, ctx.bias, ctx.sm_scale = norm, causal, bias, sm_scale
        ctx.save_for_backward(q, k, v, m, t, *(() if thr is None else (thr,)))
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, m, t, *rest = ctx.saved_tensors
        thr = rest[0] if rest else None
        norm, causal, bias, sm_scale = ctx.norm, ctx.causal, ctx.bias, ctx.sm_scale
        B, H, T, D = q.shape
        S = k.shape[2]
        cdt = m.dtype
        rows = chunk_rows(B, H, S, q.device)
        dq = torch.zeros(B, H, T, D, device=q.device, dtype=cdt)
        dk = torch.zeros(B, H, S, D, device=q.device, dtype=cdt)
        dv = torch.zeros(B, H, S, v.shape[-1], device=q.device, dtype=cdt)
        vc, kc, do = v.to(cdt), k.to(cdt), dout.to(cdt)
        for i0 in range(0, T, rows):
            i1 = min(T, i0 + rows)
            z, s_vis = _scores(q[:, :, i0:i1], kc, i0, i1, T, S, causal, bias, sm_scale, cdt)
            th = None if thr is None else thr[:, :, i0:i1]
            p = N.probs(z, norm, m[:, :, i0:i1], t[:, :, i0:i1], th)
            if norm.kind == "entmax" and norm.alpha not in (1.5, 2.0):
                p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(cdt).tiny)
            do_c = do[:, :, i0:i1]  # (B, H, C, Dv)
            dp = torch.matmul(do_c, vc[:, :, :s_vis].transpose(-1, -2))  # (B, H, C, S_vis)
            dz = N.vjp(N.sensitivity(p, norm), dp) * sm_scale
            dq[:, :, i0:i1] = torch.matmul(dz, kc[:, :, :s_vis])
            dk[:, :, :s_vis] += torch.matmul(dz.transpose(-1, -2), q[:, :, i0:i1].to(cdt))
            dv[:, :, :s_vis] += torch.matmul(p.transpose(-1, -2), do_c)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def attention(q, k, v, *, norm: Normalizer, causal: bool = True, bias=None, sm_scale=None):
    """Normalized attention; see the package docstring for the function computed."""
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    if isinstance(bias, torch.Tensor) and bias.requires_grad:
        raise ValueError("a learned dense bias is not supported; pass a constant bias or Alibi")
    T, S = q.shape[2], k.shape[2]
    if norm.kind == "softmax" and bias is None and q.dtype != torch.float64:
        if not causal or T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)
    if masked_sdpa(norm, q.device, bias, T, S, q.dtype, causal):
        mask = sdpa_mask(q, k, norm, causal, bias, sm_scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sm_scale)
    return ChunkedAttention.apply(q, k, v, norm, causal, bias, sm_scale)


@torch.no_grad()
def sdpa_mask(q, k, norm, causal, bias, sm_scale) -> torch.Tensor:
    """The float mask of ``attention``'s SDPA path: bias, -inf on future keys and, for top-k,
    on the keys below each row's k-th largest score. (1 or B, H, T, S)."""
    T, S = q.shape[2], k.shape[2]
    off = S - T
    mask = torch.zeros(1, 1, T, S, device=q.device, dtype=q.dtype)
    if isinstance(bias, Alibi):
        mask = mask + bias.tile(0, T, 0, S, off, q.device, q.dtype)
    if causal:
        future = torch.arange(S, device=q.device)[None, :] > torch.arange(T, device=q.device)[
            :, None] + off  # (T, S)
        mask = mask.masked_fill(future, float("-inf"))
    if norm.kind == "topk":  # the cut of the chunked path (ties at the k-th score kept)
        z, _ = _scores(q, k, 0, T, T, S, causal, bias, sm_scale, q.dtype)  # (B, H, T, S)
        thr = z.topk(min(norm.k, S), dim=-1).values[..., -1:]
        mask = torch.where(z >= thr, mask, float("-inf"))
    return mask
