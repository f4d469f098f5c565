"""The decoder: shapes, position encodings, which heads a length scaling touches."""

import math

import pytest
import torch

import attentions
from suite.model import PES, Decoder, ModelConfig, alibi_slopes, rope, scaled_heads


@pytest.mark.parametrize("pe", PES)
@pytest.mark.parametrize("attention", ["softmax", "ssmax", "entmax", "asentmax", "topk:k=4"])
def test_forward_backward_shapes(pe, attention):
    model = Decoder(ModelConfig(vocab_size=23, pe=pe, attention=attention, n_heads=4))
    tokens = torch.randint(0, 23, (2, 19))
    logits = model(tokens)
    assert logits.shape == (2, 19, 23) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_causal_model():
    model = Decoder(ModelConfig(vocab_size=11, attention="entmax"))
    a = torch.randint(0, 11, (1, 30))
    b = a.clone()
    b[0, 20:] = (b[0, 20:] + 1) % 11
    torch.testing.assert_close(model(a)[:, :20], model(b)[:, :20])


def test_nape_slopes_and_scaled_heads():
    cfg = ModelConfig(vocab_size=5, attention="softmax", n_heads=8, pe="nape")
    assert alibi_slopes(cfg).tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 0, 0, 0, 0])
    assert scaled_heads(cfg) == [4, 5, 6, 7]
    rope_cfg = ModelConfig(vocab_size=5, attention="softmax", n_heads=8, pe="rope")
    assert scaled_heads(rope_cfg) == list(range(8))
    press = alibi_slopes(ModelConfig(vocab_size=5, attention="softmax", n_heads=8, pe="alibi"))
    assert press.tolist() == pytest.approx([2 ** (-h) for h in range(1, 9)])
    assert alibi_slopes(ModelConfig(vocab_size=5, attention="softmax", pe="nope")) is None


def test_length_scaling_only_on_nope_heads_under_nape():
    model = Decoder(ModelConfig(vocab_size=5, n_heads=4, pe="nape", attention="ssmax"))
    attn = model.blocks[0].attn.attn
    assert attn.s.shape == (2,)
    q = torch.randn(1, 4, 6, 16)
    qs = attn.scale_q(q, None)
    torch.testing.assert_close(qs[:, :2], q[:, :2])  # ALiBi heads untouched
    factor = attn.s.detach()[:, None] * torch.log(torch.arange(6) + 2.0)
    torch.testing.assert_close(qs[:, 2:], q[:, 2:] * factor[None, :, :, None])


def test_rope_depends_on_relative_position_only():
    q, k = torch.randn(2, 1, 1, 1, 8).unbind(0)
    T = 12
    qs, ks = rope(q.expand(1, 1, T, 8), 10000.0), rope(k.expand(1, 1, T, 8), 10000.0)
    dots = (qs[0, 0] @ ks[0, 0].T)  # (T, T)
    for d in range(-3, 4):
        diag = torch.diagonal(dots, d)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qs[0, 0, 0], q[0, 0, 0])  # position 0 is unrotated


def test_embedding_scale_and_untied_head():
    model = Decoder(ModelConfig(vocab_size=7, attention="softmax", d_model=16, n_heads=2,
                                head_dim=8))
    assert model.head.weight.data_ptr() != model.embed.weight.data_ptr()
    h = model.embed(torch.tensor([[3]])) * math.sqrt(16)
    assert h.abs().mean() > 3 * model.embed.weight.abs().mean()


def test_asentmax_keeps_its_own_initialisation():
    model = Decoder(ModelConfig(vocab_size=5, attention="asentmax:init_std=0,beta_bias=-2.9702"))
    attn = model.blocks[0].attn.attn
    assert torch.count_nonzero(attn.w_beta.weight) == 0
    assert torch.allclose(attn.w_beta.bias, torch.tensor(-2.9702))


def test_bad_config():
    with pytest.raises(ValueError, match="pe='abs' is not one of"):
        ModelConfig(vocab_size=5, attention="softmax", pe="abs")
    with pytest.raises(attentions.SpecError, match="Did you mean 'entmax'"):
        Decoder(ModelConfig(vocab_size=5, attention="entmx"))


@pytest.mark.parametrize("scaled", [None, 2])
def test_asentmax_length_scale_under_autocast_matches_float32(scaled):
    """Under autocast (CUDA training) the two projections of the length scale run as one GEMM
    at the autocast dtype: the same factor as float32 within bf16 rounding, and gradients reach
    both projections."""
    from attentions.asentmax import ASEntmax, ASEntmaxConfig

    torch.manual_seed(3)
    attn = ASEntmax(ASEntmaxConfig(init_std=0.1), n_heads=4, head_dim=8, d_model=32,
                    scaled_heads=None if scaled is None else range(scaled))
    x = torch.randn(2, 37, 32)
    ref = attn.length_scale(x, 37)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn.length_scale(x, 37)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape == (2, attn.n_scaled, 37)
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    assert not torch.equal(out.float(), ref)  # it ran at bf16: not the float32 path
    out.float().sum().backward()
    for lin in (attn.w_beta, attn.w_gamma):
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
