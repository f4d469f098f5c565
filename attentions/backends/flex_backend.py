"""The flex backend: softmax attention with an ALiBi bias, fused on CUDA by torch's
FlexAttention.

    out_i = sum_j softmax_j(sm_scale * q_i . k_j - slope_h * |i' - j|) v_j   over visible j

ALiBi enters as a score modification computed inside the fused kernel (no (T, S) bias tensor
exists), causality as a block mask built from the block structure alone: a 128 x 128 block of
(queries, keys) is empty, full, or on the diagonal, so building it costs O((T/128) (S/128))
integers, not a (T, S) boolean. Without a bias, plain softmax is faster through
``scaled_dot_product_attention`` (the torch backend), so ``auto`` takes this backend only for
softmax with ALiBi (NAPE, ALiBi; SSMax under NAPE too: its length scale acts on q first).

FlexAttention is fast only compiled; the call goes through one ``torch.compile``d function
whose inputs are q, k, v, the slopes and the mask, so new layers, slopes and lengths reuse it
(lengths recompile once each, then shapes turn dynamic). What it does not take goes to the
torch backend, which computes the same function: float64, head dims that are not a power of
two in 16..256, dense bias tensors, other normalizers, CPU tensors.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..normalizer import Alibi, Normalizer
from . import torch_backend

NAME = "flex"
BLOCK = 128
HEAD_DIMS = (16, 32, 64, 128, 256)


def usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


#: the normalizer kinds FlexAttention computes here (an allow-list: any other goes elsewhere)
KINDS = frozenset({"softmax"})


def supports(norm: Normalizer, device, bias=None) -> bool:
    return (norm.kind in KINDS and torch.device(device).type == "cuda"
            and (bias is None or isinstance(bias, Alibi)))


def preferred(norm: Normalizer, device, bias=None, size=None) -> bool:
    """``auto`` takes it for softmax with ALiBi on CUDA (SDPA is faster without a bias), except
    for calls of shape ``size`` = (B, H, T, S) short enough for the torch backend's one SDPA
    call with a dense mask, which is faster there (``torch_backend.CUDA_SDPA_MASK_ELEMS``)."""
    if not (supports(norm, device, bias) and isinstance(bias, Alibi)):
        return False
    from . import torch_backend

    return size is None or not torch_backend.masked_sdpa(norm, device, bias, size[2], size[3])


def causal_blocks(T: int, S: int, device, block: int = BLOCK):
    """The causal block mask of T queries aligned to the end of S keys (key j is visible to
    query i when j <= i + S - T), from block indices alone."""
    from torch.nn.attention.flex_attention import BlockMask

    off = S - T
    nq, nk = -(-T // block), -(-S // block)
    qb = torch.arange(nq, device=device)[:, None]  # (NQ, 1)
    kb = torch.arange(nk, device=device)[None, :]  # (1, NK)
    q_lo, q_hi = qb * block + off, torch.clamp(qb * block + block - 1, max=T - 1) + off
    k_lo, k_hi = kb * block, torch.clamp(kb * block + block - 1, max=S - 1)
    full = k_hi <= q_lo  # every key of the block visible to every query of the block
    some = k_lo <= q_hi  # at least one visible pair
    partial = some & ~full

    def as_indices(sel):  # (NQ, NK) bool -> counts (1, 1, NQ), indices (1, 1, NQ, NK)
        counts = sel.sum(-1, dtype=torch.int32)
        order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts[None, None], order[None, None]

    def visible(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + off

    kv_num, kv_idx = as_indices(partial)
    full_num, full_idx = as_indices(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=visible, seq_lengths=(T, S))


@functools.lru_cache(maxsize=64)
def _mask(T: int, S: int, device: torch.device):
    return causal_blocks(T, S, device)


def _alibi(q, k, v, slopes, block_mask, scale: float, offset: int):
    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + offset - kv_idx).abs()

    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


def _plain(q, k, v, block_mask, scale: float):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=block_mask, scale=scale)


@functools.cache
def _compiled(name: str):
    import torch._dynamo

    cfg = torch._dynamo.config  # one recompile per new length, then dynamic shapes
    cfg.recompile_limit = max(cfg.recompile_limit, 64)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 512)
    return torch.compile({"alibi": _alibi, "plain": _plain}[name], fullgraph=True)


def fits(q, k, v) -> bool:
    return (q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and q.dtype == k.dtype == v.dtype and q.is_cuda
            and q.shape[-1] == k.shape[-1] == v.shape[-1] and q.shape[-1] in HEAD_DIMS
            and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] > 0)


def _backward_pad(q, k, v, T: int, S: int, causal: bool) -> int | None:
    """Rows to append to q, k and v before a call that will be differentiated.

    FlexAttention's compiled backward (torch 2.11) is wrong when the lengths are not multiples
    of its 128-row block: at the training shape of the repro MQMTAR model (B 128, H 16, T 91,
    head dim 32) the gradients came out 20x off in relative error, or NaN, while the forward
    was exact (docs/protocol.md, "Softmax under NAPE on CUDA"). Appending p zero rows to the
    queries and the keys keeps every real pair (real queries see no appended key under the
    causal mask, and the query-key offset S - T is unchanged); the extra rows are cut off after.
    0: no padding needed (no gradient, or lengths already multiples of the block). None: no p
    makes both lengths multiples (T and S differ by a non-multiple of the block), or the
    attention is not causal (appended keys would be seen)."""
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return 0
    if T % BLOCK == 0 and S % BLOCK == 0:
        return 0
    if (S - T) % BLOCK or not causal:
        return None
    return -T % BLOCK


def attention(q, k, v, *, norm: Normalizer, causal: bool = True, bias=None, sm_scale=None):
    """Normalized attention; see the package docstring of ``attentions.backends``."""
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    if not (supports(norm, q.device, bias) and fits(q, k, v)):
        return torch_backend.attention(q, k, v, norm=norm, causal=causal, bias=bias,
                                       sm_scale=sm_scale)
    T, S = q.shape[2], k.shape[2]
    pad = _backward_pad(q, k, v, T, S, causal)
    if pad is None:  # a gradient FlexAttention would get wrong, and no padding avoids it
        return torch_backend.attention(q, k, v, norm=norm, causal=causal, bias=bias,
                                       sm_scale=sm_scale)
    if pad:
        y = attention(*(F.pad(t, (0, 0, 0, pad)) for t in (q, k, v)), norm=norm, causal=causal,
                      bias=bias, sm_scale=sm_scale)
        return y[:, :, :T]
    inside = torch.compiler.is_compiling()  # an enclosing compile traces the plain functions
    mask = (causal_blocks(T, S, q.device) if inside else _mask(T, S, q.device)) \
        if causal else None
    if isinstance(bias, Alibi):
        slopes = bias.slopes.to(device=q.device, dtype=torch.float32)
        fn = _alibi if inside else _compiled("alibi")
        return fn(q, k, v, slopes, mask, float(sm_scale), S - T)
    fn = _plain if inside else _compiled("plain")
    return fn(q, k, v, mask, float(sm_scale))
