"""Adaptive-Scalable entmax (ASEntmax), with the official code's parametrisation as defaults."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .api import register
from .base import Attention, log_positions
from .normalizer import Normalizer, check_alpha


@dataclass(frozen=True)
class ASEntmaxConfig:
    alpha: float = 1.5
    delta: float = 1.0  # fixed offset of the scale (code: attn_scale_delta = 1, not learned)
    gamma_range: float = 2.0  # gamma = gamma_range * tanh(W_g x + b_g)
    log_offset: float = 2.0  # log(i + 2) for the 0-indexed position i
    init_std: float = 0.02  # weights of W_beta, W_gamma ~ N(0, init_std^2) (HF init)
    beta_bias: float = 0.0  # initial bias of W_beta (0 in the code; -2.97 gives scale 1.05)
    gamma_bias: float = 0.0

    def __post_init__(self):
        check_alpha(self.alpha)
        if self.gamma_range < 0 or self.init_std < 0:
            raise ValueError("gamma_range and init_std must be >= 0")
        if self.log_offset <= 1:
            raise ValueError(f"log_offset={self.log_offset} must be > 1 (log(i + offset) > 0)")
        if not all(map(math.isfinite, (self.delta, self.beta_bias, self.gamma_bias))):
            raise ValueError("delta, beta_bias and gamma_bias must be finite")


@register("asentmax")
class ASEntmax(Attention):
    """asentmax: entmax, q_i scaled by delta + softplus(W_b x_i) * log(i+2)^(2 tanh(W_g x_i))."""

    Config = ASEntmaxConfig

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.w_beta = nn.Linear(self.d_model, self.n_scaled)
        self.w_gamma = nn.Linear(self.d_model, self.n_scaled)
        for lin, b in ((self.w_beta, c.beta_bias), (self.w_gamma, c.gamma_bias)):
            nn.init.normal_(lin.weight, 0.0, c.init_std)
            nn.init.constant_(lin.bias, b)

    def normalizer(self) -> Normalizer:
        return Normalizer("entmax", alpha=self.config.alpha)

    def length_scale(self, x, T):
        """The per-query scale of the scaled heads, (B, H_s, T), read from the hidden states."""
        if x is None:
            raise ValueError("asentmax reads the hidden states: call attn(q, k, v, x=x) with "
                             f"x of shape (B, T, {self.d_model})")
        if x.shape[-1] != self.d_model or x.shape[-2] != T:
            raise ValueError(f"x must be (B, {T}, {self.d_model}); got {tuple(x.shape)}")
        c = self.config
        if torch.is_autocast_enabled(x.device.type):
            # training on CUDA: the projections run at the autocast dtype anyway, so no up-cast
            # of x, and both as one GEMM (the parameters stay two Linears)
            zb, zg = F.linear(x, torch.cat((self.w_beta.weight, self.w_gamma.weight)),
                              torch.cat((self.w_beta.bias, self.w_gamma.bias))
                              ).split(self.n_scaled, -1)
        else:
            x = x.to(self.w_beta.weight.dtype)
            zb, zg = self.w_beta(x), self.w_gamma(x)
        beta = F.softplus(zb).transpose(1, 2)  # (B, H_s, T)
        gamma = c.gamma_range * torch.tanh(zg).transpose(1, 2)  # (B, H_s, T)
        logn = log_positions(T, c.log_offset, x.device, beta.dtype)  # (T,)
        return c.delta + beta * logn.pow(gamma)
