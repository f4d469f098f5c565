"""The flex backend: softmax with ALiBi fused by FlexAttention (CUDA), and its causal block mask
(checked on CPU against the element mask it must imply)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from attentions import Alibi, Normalizer, nape_slopes
from attentions.backends import flex_backend as FB
from attentions.backends import torch_backend

CUDA = torch.cuda.is_available()
SOFTMAX = Normalizer("softmax")


def implied_mask(bm, T, S, block):
    """The (T, S) visibility a block mask implies: full blocks entirely, partial blocks where
    its mask function says so, nothing elsewhere."""
    out = torch.zeros(T, S, dtype=torch.bool)
    qi = torch.arange(T)[:, None]
    kj = torch.arange(S)[None, :]
    elem = bm.mask_mod(0, 0, qi, kj)  # (T, S)
    for counts, idx, full in ((bm.kv_num_blocks, bm.kv_indices, False),
                              (bm.full_kv_num_blocks, bm.full_kv_indices, True)):
        for i in range(counts.shape[-1]):
            for j in idx[0, 0, i, : int(counts[0, 0, i])].tolist():
                rows, cols = slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block)
                out[rows, cols] |= True if full else elem[rows, cols]
    return out


@pytest.mark.parametrize("T,S", [(1, 1), (5, 5), (129, 129), (300, 300), (200, 300), (7, 300),
                                 (256, 256), (260, 384)])
@pytest.mark.parametrize("block", [32, 128])
def test_causal_block_mask_implies_exactly_the_causal_mask(T, S, block):
    if T > S:  # queries aligned to the end of the keys: the first T - S rows see nothing
        pytest.skip("T > S has rows with no visible key, which no attention defines")
    bm = FB.causal_blocks(T, S, "cpu", block=block)
    want = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)
    assert torch.equal(implied_mask(bm, T, S, block), want)
    # full blocks are entirely visible, partial ones mixed, and no empty block is listed
    for counts, idx, full in ((bm.kv_num_blocks, bm.kv_indices, False),
                              (bm.full_kv_num_blocks, bm.full_kv_indices, True)):
        for i in range(counts.shape[-1]):
            for j in idx[0, 0, i, : int(counts[0, 0, i])].tolist():
                sub = want[i * block:(i + 1) * block, j * block:(j + 1) * block]
                assert bool(sub.all()) if full else (bool(sub.any()) and not bool(sub.all()))


@pytest.mark.parametrize("T,S", [(37, 37), (200, 300), (130, 130)])
def test_alibi_score_mod_matches_the_torch_backend(T, S):
    """The score modification and the mask, run by FlexAttention's unfused reference on CPU
    (forward only: its CPU path has no backward), against the torch backend in float64."""
    g = torch.Generator().manual_seed(T)
    q = torch.randn(2, 4, T, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 4, S, 16, generator=g, dtype=torch.float64) for _ in range(2))
    slopes = nape_slopes(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": intended here
        y = FB._alibi(q, k, v, slopes.double(), FB.causal_blocks(T, S, "cpu"), 0.25, S - T)
    ref = torch_backend.attention(q, k, v, norm=SOFTMAX, bias=Alibi(slopes), sm_scale=0.25)
    assert (y - ref).abs().max() < 1e-12


def test_backward_padding_rule():
    """Which differentiated calls are padded to the 128-row block, and by how much (the
    kernel's compiled backward is wrong off the block); forward-only calls never are."""
    def pad(T, S, grad=True, causal=True):
        q = torch.zeros(1, 1, T, 16, requires_grad=grad)
        k = v = torch.zeros(1, 1, S, 16)
        return FB._backward_pad(q, k, v, T, S, causal)

    assert pad(91, 91) == 37 and pad(1, 1) == 127 and pad(200, 328) == 56
    assert pad(128, 128) == 0 and pad(256, 384) == 0
    assert pad(91, 91, grad=False) == 0
    with torch.no_grad():
        assert FB._backward_pad(*(torch.zeros(1, 1, 91, 16, requires_grad=True),) * 3,
                                91, 91, True) == 0
    assert pad(7, 300) is None  # no common padding reaches the block: the torch backend
    assert pad(91, 91, causal=False) is None  # appended keys would be seen


@pytest.mark.parametrize("T,S", [(91, 91), (200, 328), (5, 5)])
def test_padded_call_computes_the_unpadded_attention(T, S):
    """Appending the padding rows to q, k and v, masking causally at the padded lengths with the
    same query-key offset, and cutting the rows off again gives the attention of the unpadded
    inputs (FlexAttention's unfused reference on CPU, float64)."""
    g = torch.Generator().manual_seed(T)
    q = torch.randn(2, 4, T, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 4, S, 16, generator=g, dtype=torch.float64) for _ in range(2))
    slopes = nape_slopes(4)
    p = -T % FB.BLOCK
    qp, kp, vp = (torch.nn.functional.pad(t, (0, 0, 0, p)) for t in (q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": intended here
        y = FB._alibi(qp, kp, vp, slopes.double(), FB.causal_blocks(T + p, S + p, "cpu"), 0.25,
                      S - T)[:, :, :T]
    ref = torch_backend.attention(q, k, v, norm=SOFTMAX, bias=Alibi(slopes), sm_scale=0.25)
    assert (y - ref).abs().max() < 1e-12


def test_auto_takes_flex_only_for_softmax_with_alibi_on_cuda():
    from attentions.backends import resolve

    alibi = Alibi(nape_slopes(4))
    assert not FB.preferred(SOFTMAX, torch.device("cpu"), alibi)
    assert not FB.preferred(SOFTMAX, torch.device("cuda"), None)  # SDPA wins there
    assert not FB.supports(Normalizer("entmax"), torch.device("cuda"), alibi)
    if CUDA:
        assert resolve("auto", SOFTMAX, torch.device("cuda"), alibi).NAME == "flex"
    assert resolve("auto", SOFTMAX, torch.device("cpu"), alibi).NAME != "flex"


@pytest.mark.parametrize("size,flex", [((128, 16, 91, 91), False), ((128, 8, 131, 131), False),
                                       ((32, 8, 256, 256), False), ((16, 8, 257, 257), True),
                                       ((2, 16, 4096, 4096), True), ((1, 4, 2, 65536), True)])
def test_training_lengths_take_the_masked_sdpa_call_on_cuda(size, flex):
    """Softmax with NAPE on CUDA: FlexAttention for long rows, one SDPA call with a dense mask
    at training lengths (up to 256 x 256 scores per head), where it is faster."""
    alibi, cuda = Alibi(nape_slopes(size[1])), torch.device("cuda")
    assert FB.preferred(SOFTMAX, cuda, alibi, size=size) == flex
    T, S = size[2:]
    assert torch_backend.masked_sdpa(SOFTMAX, cuda, alibi, T, S, torch.bfloat16) == (not flex)
    assert not torch_backend.masked_sdpa(SOFTMAX, cuda, alibi, T, S, torch.float64)
    assert not torch_backend.masked_sdpa(Normalizer("entmax"), cuda, alibi, T, S)
    assert FB.preferred(SOFTMAX, cuda, alibi)  # no shape given: FlexAttention
    if CUDA:
        from attentions.backends import resolve

        assert resolve("auto", SOFTMAX, cuda, alibi, size).NAME == ("flex" if flex else "torch")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,S", [(1, 1), (64, 64), (91, 91), (131, 131), (7, 200), (256, 256)])
@pytest.mark.parametrize("alibi", [True, False])
@pytest.mark.parametrize("scale", [1.0, 40.0])
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_masked_sdpa_forward_and_gradients(dtype, T, S, alibi, scale, compiled):
    """The torch backend's masked SDPA call on CUDA (softmax, causal, NAPE or no bias, at
    training lengths; ``scale`` 40 makes extreme logits): outputs and gradients against the
    chunked float64 reference, finite, eager and compiled. float32 within 1e-4; bf16 within
    2x the error of the chunked path at bf16 plus 1e-3 (bf16 rounding of extreme logits alone
    moves a near-one-hot row by several percent, on either path)."""
    import torch._dynamo

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(T * 7 + S)
    B, H, D = 3, 4, 32
    q = scale * torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, H, S, D, generator=g, dtype=torch.float64) for _ in range(2))
    dy = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    bias = Alibi(nape_slopes(H).cuda()) if alibi else None
    assert torch_backend.masked_sdpa(SOFTMAX, "cuda", bias, T, S, dtype) or (
        bias is None and T == S)  # no bias, square: plain causal SDPA

    def run(dt, compile_it, chunked=False):
        xs = [t.cuda().to(dt).requires_grad_() for t in (q, k, v)]

        def f(q, k, v):
            if chunked:
                return torch_backend.ChunkedAttention.apply(q, k, v, SOFTMAX, True, bias,
                                                            1 / math.sqrt(D))
            return torch_backend.attention(q, k, v, norm=SOFTMAX, causal=True, bias=bias,
                                           sm_scale=1 / math.sqrt(D))

        y = (torch.compile(f, fullgraph=True) if compile_it else f)(*xs)
        return y, torch.autograd.grad((y * dy.cuda().to(dt)).sum(), xs)

    y64, g64 = run(torch.float64, False)
    y, gr = run(dtype, compiled)
    yc, gc = run(dtype, False, chunked=True)
    for ours, plain, ref in zip((y, *gr), (yc, *gc), (y64, *g64)):
        assert torch.isfinite(ours).all()
        if ref.norm() > 0:
            tol = 1e-4 if dtype == torch.float32 else 2 * rel(plain, ref) + 1e-3
            assert rel(ours, ref) < tol, (rel(ours, ref), tol)


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,S,D", [(97, 97, 16), (1025, 1025, 64), (200, 333, 32),
                                   (64, 64, 32)])
@pytest.mark.parametrize("alibi", [True, False])
def test_cuda_forward_and_gradients(dtype, T, S, D, alibi):
    """Outputs and gradients against float64; bf16 within 2x of the torch backend's own bf16
    error (plain torch at that dtype)."""
    g = torch.Generator().manual_seed(T + D)
    H = 4
    q = torch.randn(2, H, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, H, S, D, generator=g, dtype=torch.float64) for _ in range(2))
    bias = Alibi(nape_slopes(H).cuda()) if alibi else None
    dy = torch.randn(2, H, T, D, generator=g, dtype=torch.float64)

    def run(backend, dt):
        xs = [t.cuda().to(dt).requires_grad_() for t in (q, k, v)]
        y = backend.attention(*xs, norm=SOFTMAX, causal=True, bias=bias,
                              sm_scale=1 / math.sqrt(D))
        grads = torch.autograd.grad((y * dy.cuda().to(dt)).sum(), xs)
        return y, grads

    y64, g64 = run(torch_backend, torch.float64)
    y, gr = run(FB, dtype)
    yt, gt = run(torch_backend, dtype)
    tol = 1e-5 if dtype == torch.float32 else None
    for ours, plain, ref in zip((y, *gr), (yt, *gt), (y64, *g64)):
        err = rel(ours, ref)
        assert err < (tol if tol else 2 * rel(plain, ref) + 1e-3), err


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("B,T", [(128, 91), (16, 200), (4, 128)])
def test_cuda_gradients_at_training_shapes(dtype, compiled, B, T):
    """q, k, v as the model makes them (views of one fused projection, (B, T, 3, H, D)
    permuted), an output gradient in the layout the model's reshape sends back, and the first
    compilation of the kernel at that shape: outputs and gradients against float64.
    FlexAttention's compiled backward is wrong at lengths off its 128-row block (the training
    shape of the repro MQMTAR model, B 128, T 91, gave gradients 20x off, or NaN); the backend
    pads such calls to the block."""
    import torch._dynamo

    torch._dynamo.reset()
    FB._compiled.cache_clear()
    g = torch.Generator().manual_seed(5)
    H, D = 16, 32
    qkv = torch.randn(B, T, 3, H, D, generator=g, dtype=torch.float64)
    dy = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    bias = Alibi(nape_slopes(H).cuda())

    def run(backend, dt):
        x = qkv.cuda().to(dt).requires_grad_()
        q, k, v = x.permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D), strided views
        assert not q.is_contiguous()

        def f(q, k, v):
            y = backend.attention(q, k, v, norm=SOFTMAX, causal=True, bias=bias,
                                  sm_scale=1 / math.sqrt(D))
            return y.transpose(1, 2).reshape(B, T, H * D)  # the model's layout

        fn = torch.compile(f, fullgraph=True) if (compiled and backend is FB) else f
        y = fn(q, k, v)
        (grad,) = torch.autograd.grad((y * dy.cuda().to(dt).reshape(B, T, H * D)).sum(), x)
        return y, grad

    y64, g64 = run(torch_backend, torch.float64)
    y, gr = run(FB, dtype)
    yt, gt = run(torch_backend, dtype)
    tol = 1e-5 if dtype == torch.float32 else None
    for ours, plain, ref in ((y, yt, y64), (gr, gt, g64)):
        err = rel(ours, ref)
        assert err < (tol if tol else 2 * rel(plain, ref) + 1e-3), err
