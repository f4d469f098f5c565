"""The decoder the suite trains: Gemma-2 style, attention from the registry.

    h_0 = sqrt(d_model) * E[tokens]
    a   = Attn(RMSNorm(h))            ; h = h + RMSNorm(a)        # pre- and post-norm
    m   = GeGLU(RMSNorm(h))           ; h = h + RMSNorm(m)
    logits = W_out RMSNorm(h)          # untied

GeGLU(x) = W_down(gelu_tanh(W_gate x) * W_up x). RMSNorm scales by (1 + w), w initialised 0.
Attention scores are q.k/sqrt(head_dim) (+ a position bias). Position encodings:
``nope`` (the causal mask alone), ``rope`` (rotate-half, theta 10000, all heads), ``alibi``
(Press et al. slopes 2^(-8h/H), all heads) and ``nape`` (first half of the heads ALiBi with
slopes 1/h, the rest NoPE). A variant's learned length scaling (its ``length_scale``) acts on
the NoPE heads under NAPE and on all heads otherwise, and reads the normed input of its
attention block as the hidden states ``x``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

import attentions
from attentions import Alibi
from attentions.backends.torch_normalizers import normalize

PES = ("nope", "rope", "alibi", "nape")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    attention: str  # the attention's spec string
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    head_dim: int = 16
    d_ff: int = 128
    pe: str = "nape"
    backend: str = "auto"
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.pe not in PES:
            raise ValueError(f"pe={self.pe!r} is not one of {', '.join(PES)}")
        for f in ("vocab_size", "n_layers", "d_model", "n_heads", "head_dim", "d_ff"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f}={getattr(self, f)} must be positive")
        if self.pe == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")


def alibi_slopes(cfg: ModelConfig) -> torch.Tensor | None:
    H = cfg.n_heads
    if cfg.pe == "nape":
        return attentions.nape_slopes(H)
    if cfg.pe == "alibi":
        return torch.tensor([2.0 ** (-8.0 * h / H) for h in range(1, H + 1)])
    return None


def scaled_heads(cfg: ModelConfig) -> list[int]:
    """The heads a length scaling acts on: NoPE heads under NAPE, all heads otherwise."""
    if cfg.pe == "nape":
        return list(range(cfg.n_heads // 2, cfg.n_heads))
    return list(range(cfg.n_heads))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half rotary embedding of (B, H, T, D) at positions 0..T-1."""
    B, H, T, D = x.shape
    inv = theta ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)  # (D/2,)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv[None]  # (T, D/2)
    cos, sin = ang.cos().repeat(1, 2).to(x.dtype), ang.sin().repeat(1, 2).to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


@dataclasses.dataclass
class Probe:
    """Query rows whose attention is inspected during evaluation, and what is collected."""

    rows: torch.Tensor  # (B, R) query positions
    targets: torch.Tensor | None = None  # (B, R, K) positions that hold each row's answer
    # (-1: none; a row with none is left out of the target mass), or None
    stats: list = dataclasses.field(default_factory=list)  # one dict per layer


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, Dh = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * H * Dh, bias=False)
        self.out = nn.Linear(H * Dh, cfg.d_model, bias=False)
        self.attn = attentions.build(cfg.attention, n_heads=H, head_dim=Dh, d_model=cfg.d_model,
                                     backend=cfg.backend, scaled_heads=scaled_heads(cfg))
        slopes = alibi_slopes(cfg)
        self.register_buffer("slopes", slopes, persistent=False) if slopes is not None else None
        self.probe: Probe | None = None

    def forward(self, x):  # x: (B, T, d_model), already normed
        B, T, _ = x.shape
        H, Dh = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        if self.cfg.pe == "rope":
            q, k = rope(q, self.cfg.rope_theta), rope(k, self.cfg.rope_theta)
        bias = Alibi(self.slopes) if self.cfg.pe in ("alibi", "nape") else None
        y = self.attn(q, k, v, x=x, bias=bias, causal=True)  # (B, H, T, Dh)
        if self.probe is not None:
            self._inspect(q, k, x, bias)
        return self.out(y.transpose(1, 2).reshape(B, T, H * Dh))

    @torch.no_grad()
    def _inspect(self, q, k, x, bias):
        """Attention diagnostics on the probe rows only (R rows x T keys per head)."""
        try:
            norm = self.attn.normalizer()
        except NotImplementedError:  # a plain-function variant: no weights to inspect
            return
        probe = self.probe
        rows = probe.rows.to(q.device)  # (B, R): the batch's first B sequences are probed
        q, k, x = q[:rows.shape[0]], k[:rows.shape[0]], x[:rows.shape[0]]
        B, H, T, Dh = q.shape
        qs = self.attn.scale_q(q, x)  # (B, H, T, Dh)
        qr = qs.gather(2, rows[:, None, :, None].expand(B, H, rows.shape[1], Dh))  # (B,H,R,Dh)
        z = (qr.float() @ k.float().transpose(-1, -2)) / math.sqrt(Dh)  # (B, H, R, T)
        pos = torch.arange(T, device=q.device)
        if bias is not None:
            dist = (rows[:, None, :, None] - pos).abs().float()  # (B, 1, R, T)
            z = z - bias.slopes.to(q.device).float()[None, :, None, None] * dist
        z = z.masked_fill(pos[None, None, None, :] > rows[:, None, :, None], float("-inf"))
        p = normalize(z, norm)  # (B, H, R, T)
        n = (rows + 1).float()[:, None, :]  # (B, 1, R) visible keys
        ent = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (B, H, R)
        stat = {
            "entropy_norm": (ent / n.log().clamp_min(1e-9)).mean(dim=(0, 2)),  # (H,)
            "support": (p > 0).sum(-1).float().mean(dim=(0, 2)),  # (H,)
            "max_weight": p.amax(-1).mean(dim=(0, 2)),  # (H,)
        }
        if probe.targets is not None:
            tg = probe.targets.to(q.device)  # (B, R, K)
            idx = tg.clamp_min(0)[:, None].expand(B, H, *tg.shape[1:])  # (B, H, R, K)
            mass = (p.gather(-1, idx) * (tg >= 0)[:, None].float()).sum(-1)  # (B, H, R)
            needs = (tg >= 0).any(-1)[:, None].float()  # (B, 1, R): rows that have an answer
            stat["target_mass"] = (mass * needs).sum(dim=(0, 2)) / needs.sum().clamp_min(1)
        factor = self.attn.length_scale(x, T)  # (B or 1, H_s, T), or None
        if factor is not None:  # the learned scale at the probe rows, mean per scaled head
            idx = rows[:, None, :].expand(-1, factor.shape[1], -1)  # (B, H_s, R)
            stat["scale"] = factor.expand(B, -1, -1).gather(2, idx).float().mean(dim=(0, 2))
        probe.stats.append(stat)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.gelu(gate, approximate="tanh") * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_attn_in, self.norm_attn_out = RMSNorm(cfg.d_model), RMSNorm(cfg.d_model)
        self.norm_mlp_in, self.norm_mlp_out = RMSNorm(cfg.d_model), RMSNorm(cfg.d_model)
        self.attn, self.mlp = Attention(cfg), MLP(cfg)

    def forward(self, h):
        h = h + self.norm_attn_out(self.attn(self.norm_attn_in(h)))
        return h + self.norm_mlp_out(self.mlp(self.norm_mlp_in(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # N(0, 0.02) everywhere (HF's init) except inside the attention variants, whose
        # learned parts are initialised by their own spec keys
        own = {id(m) for mod in self.modules() if isinstance(mod, attentions.Attention)
               for m in mod.modules()}
        for m in self.modules():
            if id(m) not in own and isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, tokens):  # (B, T) -> (B, T, V)
        h = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def set_probe(self, probe: Probe | None) -> None:
        for block in self.blocks:
            block.attn.probe = probe
