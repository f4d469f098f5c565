"""The contract every registered (variant, backend, device) meets, generated from the registry.

Shapes, finiteness, rows on the simplex (identity as V), zero weight on future keys, agreement
with float64 dense references built on the independent ``entmax`` package (outputs and
gradients), gradcheck in float64, odd sizes, extreme logits, masks, half precision within 2x of
plain torch's own error at that dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attentions
from attentions import Alibi, nape_slopes, parse_spec
from attentions.backends import load as load_backend

from . import reference as R
from .conftest import DEVICES, rel

SPECS = ["softmax", "ssmax", "entmax", "entmax:alpha=1.25", "entmax:alpha=1.75", "sparsemax",
         "asentmax", "topk:k=5"]
H, D, DM = 3, 8, 12
SCALED = [1, 2]  # NAPE-like: length scaling on a subset of heads


def cases():
    out = []
    for name in attentions.names():
        specs = [s for s in SPECS if parse_spec(s)[0] == name] or [name]
        for spec in specs:
            norm = attentions.build(spec, n_heads=1, head_dim=1).normalizer
            for backend in attentions.backends(name):
                for dev in DEVICES:
                    mod = load_backend(backend)
                    try:
                        ok = mod.supports(norm(), torch.device(dev), None)
                    except NotImplementedError:
                        ok = True  # plain-function variants: pure torch
                    if ok:
                        out.append(pytest.param(spec, backend, dev, id=f"{spec}-{backend}-{dev}"))
    return out


CASES = cases()


def make(spec, backend, device, dtype=torch.float64, n_heads=H, head_dim=D):
    torch.manual_seed(1)
    attn = attentions.build(spec, n_heads=n_heads, head_dim=head_dim, d_model=DM,
                            backend=backend, scaled_heads=SCALED)
    return attn.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


def inputs(B, T, device, dtype=torch.float64, scale=1.0, head_dim=D, n_heads=H):
    g = torch.Generator().manual_seed(T * 7 + B)
    q, k, v = (torch.randn(3, B, n_heads, T, head_dim, generator=g, dtype=torch.float64) * scale)
    x = torch.randn(B, T, DM, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, x)]


def ref_factor(attn, T, x):
    """The factor of q on every head, (B, H, T): the variant's declared ``length_scale`` on
    the scaled heads (checked against each built-in's own formula in
    ``test_learned_scales_follow_their_formulas``), ones elsewhere. The kernels' outputs are
    then checked against references that scale q by it, so a variant whose ``scale_q`` does
    something else than it declares fails."""
    full = torch.ones(x.shape[0], attn.n_heads, T, dtype=torch.float64)
    with torch.no_grad():
        factor = attn.length_scale(x, T)
    if factor is not None:
        full[:, SCALED] = factor.double().cpu()
    return full


def ssmax_formula(attn, T, x):
    """s_h log(i + offset), from the parameters alone."""
    i = torch.arange(T, dtype=torch.float64)
    s = attn.s.detach().double()
    return (s[None, :, None] * torch.log(i + attn.config.log_offset)[None, None, :]).expand(
        x.shape[0], -1, -1)


def asentmax_formula(attn, T, x):
    """delta + softplus(W_b x + b_b) log(i + offset)^(gamma_range tanh(W_g x + b_g))."""
    c = attn.config
    i = torch.arange(T, dtype=torch.float64)
    xd = x.detach().double()
    wb, bb, wg, bg = (t.detach().double() for t in (
        attn.w_beta.weight, attn.w_beta.bias, attn.w_gamma.weight, attn.w_gamma.bias))
    beta = F.softplus(xd @ wb.T + bb).transpose(1, 2)
    gamma = c.gamma_range * torch.tanh(xd @ wg.T + bg).transpose(1, 2)
    return c.delta + beta * torch.log(i + c.log_offset) ** gamma


FORMULAS = {"ssmax": ssmax_formula, "asentmax": asentmax_formula}  # the built-in scalings


@pytest.mark.parametrize("spec", ["ssmax", "ssmax:s_init=0.5,log_offset=3", "asentmax",
                                  "asentmax:gamma_range=1,delta=0.5,beta_bias=0.3"])
def test_learned_scales_follow_their_formulas(spec):
    attn = make(spec, "torch", "cpu")
    q, _, _, x = inputs(2, 37, "cpu")
    want = FORMULAS[parse_spec(spec)[0]](attn, 37, x)  # (B, H_s, T)
    got = attn.length_scale(x, 37)
    torch.testing.assert_close(got.expand_as(want), want, rtol=1e-12, atol=0)
    scaled = attn.scale_q(q, x)
    torch.testing.assert_close(scaled[:, SCALED], q[:, SCALED] * want[..., None], rtol=1e-12,
                               atol=0)
    others = [h for h in range(H) if h not in SCALED]
    assert torch.equal(scaled[:, others], q[:, others])


def reference(attn, q, k, v, x, *, causal=True, bias=None):
    f = ref_factor(attn, q.shape[2], x)
    qs = q.detach().double().cpu() * f[..., None]
    return R.attention(qs, k.detach().double().cpu(), v.detach().double().cpu(),
                       attn.normalizer(), causal=causal, bias=bias)


@pytest.mark.parametrize("spec,backend,device", CASES)
@pytest.mark.parametrize("T", [1, 97, 1025])
def test_forward_matches_float64_reference(spec, backend, device, T):
    B = 2 if T < 1025 else 1
    attn = make(spec, backend, device)
    q, k, v, x = inputs(B, T, device)
    y = attn(q, k, v, x=x, causal=True)
    assert y.shape == (B, H, T, D) and y.dtype == torch.float64
    assert torch.isfinite(y).all()
    assert rel(y, reference(attn, q, k, v, x)[0]) < 1e-10


@pytest.mark.parametrize("spec,backend,device", CASES)
@pytest.mark.parametrize("causal,bias", [(False, None), (True, "alibi"), (False, "alibi")])
def test_noncausal_and_alibi(spec, backend, device, causal, bias):
    attn = make(spec, backend, device)
    q, k, v, x = inputs(2, 45, device)
    b = Alibi(nape_slopes(H).to(device)) if bias else None
    y = attn(q, k, v, x=x, causal=causal, bias=b)
    ref = reference(attn, q, k, v, x, causal=causal,
                    bias=Alibi(nape_slopes(H)) if bias else None)[0]
    assert rel(y, ref) < 1e-10


@pytest.mark.parametrize("spec,backend,device", CASES)
def test_float32_matches_reference(spec, backend, device):
    attn = make(spec, backend, device, torch.float32)
    q, k, v, x = inputs(2, 97, device, torch.float32)
    y = attn(q, k, v, x=x)
    assert y.dtype == torch.float32
    assert rel(y, reference(attn, q, k, v, x)[0]) < 2e-5


@pytest.mark.parametrize("spec,backend,device", CASES)
def test_rows_on_simplex_and_causal_zeros(spec, backend, device):
    T = 33
    attn = make(spec, backend, device, head_dim=T)
    q, k, _, x = inputs(1, T, device, head_dim=T)
    eye = torch.eye(T, dtype=torch.float64, device=device).expand(1, H, T, T)
    P = attn(q, k, eye, x=x)  # the attention matrix
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(-1), torch.ones(1, H, T, dtype=P.dtype, device=device))
    assert (P.triu(1) == 0).all(), "weight on future keys"
    assert rel(P, reference(attn, q, k, eye, x)[1]) < 1e-10
    if attn.normalizer().kind == "entmax":
        assert (P == 0).any(), "entmax gives exact zeros"


@pytest.mark.parametrize("spec,backend,device", CASES)
def test_future_keys_do_not_matter(spec, backend, device):
    attn = make(spec, backend, device)
    q, k, v, x = inputs(2, 40, device)
    y = attn(q, k, v, x=x)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 20:] += 5 * torch.randn_like(k2[:, :, 20:])
    v2[:, :, 20:] += 5 * torch.randn_like(v2[:, :, 20:])
    y2 = attn(q, k2, v2, x=x)
    torch.testing.assert_close(y[:, :, :20], y2[:, :, :20], rtol=0, atol=1e-12)
    assert not torch.allclose(y[:, :, 20:], y2[:, :, 20:])


@pytest.mark.parametrize("spec,backend,device", CASES)
def test_gradients_match_float64_reference(spec, backend, device):
    attn = make(spec, backend, device)
    q, k, v, x = (t.requires_grad_() for t in inputs(2, 97, device))
    y = attn(q, k, v, x=x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), (q, k, v))
    qr, kr, vr = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    f = ref_factor(attn, q.shape[2], x)
    yr = R.attention(qr * f[..., None], kr, vr, attn.normalizer(), causal=True)[0]
    ref = torch.autograd.grad((yr * g.double().cpu()).sum(), (qr, kr, vr))
    for got, want in zip(grads, ref):
        assert rel(got, want) < 1e-8


@pytest.mark.parametrize("spec,backend,device", [c for c in CASES if c.values[2] == "cpu"])
def test_float32_training_shapes_with_alibi_and_gradients(spec, backend, device):
    """The path a CPU training step takes (float32, causal, NAPE's ALiBi, T = 67: the torch
    backend's one-call SDPA with a float mask, the numba backend's short kernels) against the
    float64 reference, outputs and gradients."""
    attn = make(spec, backend, device, torch.float32)
    q, k, v, x = (t.requires_grad_() for t in inputs(2, 67, device, torch.float32))
    bias = Alibi(nape_slopes(H))
    y = attn(q, k, v, x=x, causal=True, bias=bias)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), (q, k, v))
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    f = ref_factor(attn, 67, x)
    yr = R.attention(qr * f[..., None], kr, vr, attn.normalizer(), causal=True, bias=bias)[0]
    ref = torch.autograd.grad((yr * g.double()).sum(), (qr, kr, vr))
    assert rel(y, yr) < 2e-5
    for got, want in zip(grads, ref):
        assert rel(got, want) < 1e-4


@pytest.mark.parametrize("spec,backend,device", CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_float64(spec, backend, device, causal):
    attn = make(spec, backend, device)
    q, k, v, x = (t.requires_grad_() for t in inputs(1, 7, device, head_dim=3))
    attn = make(spec, backend, device, head_dim=3)
    fn = lambda q, k, v, x: attn(q, k, v, x=x, causal=causal)
    assert torch.autograd.gradcheck(fn, (q, k, v, x), eps=1e-6, atol=1e-7)


def _learns(spec) -> bool:
    return any(True for _ in attentions.build(spec, n_heads=H, head_dim=D, d_model=DM,
                                              scaled_heads=SCALED).parameters())


@pytest.mark.parametrize("spec,backend,device", [c for c in CASES if _learns(c.values[0])])
def test_gradcheck_learned_parameters(spec, backend, device):
    attn = make(spec, backend, device, head_dim=3)
    q, k, v, x = inputs(1, 7, device, head_dim=3)
    names, params = zip(*attn.named_parameters())

    def fn(*ps):
        return torch.func.functional_call(attn, dict(zip(names, ps)), (q, k, v), {"x": x})

    assert torch.autograd.gradcheck(fn, tuple(p.detach().requires_grad_() for p in params),
                                    eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec,backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_logits(spec, backend, device, dtype):
    attn = make(spec, backend, device, dtype)
    q, k, v, x = inputs(1, 64, device, dtype, scale=1.0)
    q = q * (1e4 / (q.norm(dim=-1, keepdim=True) * k.norm(dim=-1).amax() / math.sqrt(D)))
    y = attn(q, k, v, x=x)  # scores reach +-1e4 (and beyond on scaled heads)
    assert torch.isfinite(y).all()
    ref = reference(attn, q, k, v, x)[0]
    assert rel(y, ref) < (1e-10 if dtype == torch.float64 else 1e-4)
    q.requires_grad_()
    (gq,) = torch.autograd.grad(attn(q, k, v, x=x).sum(), q)
    assert torch.isfinite(gq).all()


@pytest.mark.parametrize("spec,backend,device", CASES)
def test_masked_all_but_one(spec, backend, device):
    """A dense -inf mask leaving one key per row: the output is exactly that key's value."""
    T = 11
    attn = make(spec, backend, device)
    q, k, v, x = inputs(2, T, device, scale=30.0)
    keep = torch.randint(0, T, (T,))
    bias = torch.full((T, T), float("-inf"), dtype=torch.float64, device=device)
    bias[torch.arange(T), keep] = 0.0
    if not takes(attn, backend, device, bias):
        pytest.skip(f"the {backend} backend takes no dense bias tensor (ALiBi or none only)")
    y = attn(q, k, v, x=x, causal=False, bias=bias)
    torch.testing.assert_close(y, v[:, :, keep], rtol=0, atol=1e-12)


def takes(attn, backend, device, bias) -> bool:
    """Whether the backend runs this variant with this bias (plain-function variants: all)."""
    try:
        norm = attn.normalizer()
    except NotImplementedError:
        return True
    return load_backend(backend).supports(norm, torch.device(device), bias)


def plain_torch(q, k, v, norm, dtype):
    """What plain torch gets at a low dtype: scores and P @ V at that dtype."""
    z = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    T = q.shape[2]
    z = z.masked_fill(torch.ones(T, T, dtype=torch.bool, device=z.device).triu(1), float("-inf"))
    if norm.kind == "softmax":
        p = torch.softmax(z, -1)
    else:
        p = R.normalize(z.double(), norm).to(dtype)
    return p @ v


@pytest.mark.parametrize("spec,backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_2x_of_plain_torch(spec, backend, device, dtype):
    attn = make(spec, backend, device, dtype)
    q, k, v, x = inputs(2, 97, device, torch.float32)
    qh, kh, vh = (t.to(dtype) for t in (q, k, v))
    y = attn(qh, kh, vh, x=x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = reference(attn, qh, kh, vh, x)[0]
    f = ref_factor(attn, q.shape[2], x).to(device=device, dtype=torch.float32)
    base = plain_torch((qh.float() * f[..., None]).to(dtype), kh, vh, attn.normalizer(), dtype)
    assert rel(y, ref) <= 2 * rel(base, ref), (rel(y, ref), rel(base, ref))
