"""Float64 dense references for the contract tests, built on the independent ``entmax`` package
(entmax15, sparsemax, entmax_bisect) and plain torch, materializing the whole score matrix."""

from __future__ import annotations

import math

import entmax as E
import torch

from attentions import Alibi, Normalizer


def dense_scores(q, k, *, causal, bias, sm_scale=None):
    """(B, H, T, S) float64 scores, -inf where masked."""
    q, k = q.double(), k.double()
    T, S = q.shape[2], k.shape[2]
    z = q @ k.transpose(-1, -2) * (sm_scale or 1.0 / math.sqrt(q.shape[-1]))
    if isinstance(bias, Alibi):
        i = torch.arange(T, dtype=torch.float64)[:, None] + (S - T)
        j = torch.arange(S, dtype=torch.float64)[None, :]
        z = z - bias.slopes.double()[None, :, None, None] * (i - j).abs()
    elif bias is not None:
        z = z + bias.double()
    if causal:
        i = torch.arange(T)[:, None] + (S - T)
        z = z.masked_fill(torch.arange(S)[None, :] > i, float("-inf"))
    return z


def normalize(z, norm: Normalizer):
    if norm.kind == "softmax":
        return torch.softmax(z, -1)
    if norm.kind == "topk":
        kth = z.topk(min(norm.k, z.shape[-1]), -1).values[..., -1:]
        return torch.softmax(z.masked_fill(z < kth, float("-inf")), -1)
    if norm.alpha == 1.5:
        return E.entmax15(z, dim=-1)
    if norm.alpha == 2.0:
        return E.sparsemax(z, dim=-1)
    return E.entmax_bisect(z, alpha=norm.alpha, dim=-1, n_iter=200)


def attention(q, k, v, norm, *, causal=True, bias=None):
    p = normalize(dense_scores(q, k, causal=causal, bias=bias), norm)
    return p @ v.double(), p
