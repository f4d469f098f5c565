"""Scalable-Softmax (Nakanishi 2025) as the official ASEntmax code runs it."""

from dataclasses import dataclass

import torch
from torch import nn

from .api import register
from .base import Attention, log_positions
from .normalizer import Normalizer


@dataclass(frozen=True)
class SSMaxConfig:
    s_init: float = 1.0  # mean of the initial s_h (official code: N(1, 0.01^2))
    s_std: float = 0.01
    log_offset: float = 2.0  # n_i = i + log_offset for the 0-indexed position i (code: log(i+2))

    def __post_init__(self):
        if self.s_std < 0:
            raise ValueError(f"s_std={self.s_std} must be >= 0")
        if self.log_offset <= 1:
            raise ValueError(f"log_offset={self.log_offset} must be > 1 (log(i + offset) > 0)")


@register("ssmax")
class SSMax(Attention):
    """ssmax: softmax with q_i scaled by s_h * log(i + 2), s_h learned per scaled head."""

    Config = SSMaxConfig

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        s = torch.empty(self.n_scaled).normal_(self.config.s_init, self.config.s_std)
        self.s = nn.Parameter(s)  # (H_s,)

    def normalizer(self) -> Normalizer:
        return Normalizer("softmax")

    def length_scale(self, x, T):
        logn = log_positions(T, self.config.log_offset, self.s.device, self.s.dtype)  # (T,)
        return self.s[None, :, None] * logn[None, None, :]  # (1, H_s, T)
