"""Parity of the fused Triton entmax kernels (``attentions.backends.triton_backend``).

On CUDA the kernels run compiled; without CUDA they run in Triton's interpreter
(TRITON_INTERPRET=1, set here before triton is imported) at small sizes. References: the
torch backend in float64 and dense float64 attention built on the ``entmax`` package.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA: run with TRITON_INTERPRET=1 (tox -e triton) for the interpreter",
                allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from attentions import Alibi, Normalizer, knobs, nape_slopes  # noqa: E402
from attentions.backends import torch_backend  # noqa: E402
from attentions.backends import triton_backend as TB  # noqa: E402

from . import reference as R  # noqa: E402
from .conftest import ROOT, rel  # noqa: E402

DEV = "cuda" if CUDA else "cpu"


@pytest.fixture(autouse=True)
def knob():
    """Set kernel knobs for one test (``knob(triton_skip=True)``); the defaults before and after
    each test, so the fused backward kernels themselves are tested whatever ran before."""
    before = knobs.configure(knobs.DEFAULT)

    def set_(**changes):
        knobs.configure(dataclasses.replace(knobs.current(), **changes))

    yield set_
    knobs.configure(before)


def inputs(B, H, T, D, dtype=torch.float32, S=None, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64) * scale
    k = torch.randn(B, H, S, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, S, D, generator=g, dtype=torch.float64)
    return [t.to(device=DEV, dtype=dtype) for t in (q, k, v)]


def run(q, k, v, alpha, causal, bias, grad_out=None):
    """Output and (q, k, v) gradients of the Triton kernels."""
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    y = TB.attention(qs, ks, vs, norm=Normalizer("entmax", alpha=alpha), causal=causal,
                     bias=bias)
    g = torch.ones_like(y) if grad_out is None else grad_out
    return y, torch.autograd.grad((y * g).sum(), (qs, ks, vs))


def ref64(q, k, v, alpha, causal, bias, grad_out):
    """Dense float64 reference on CPU (entmax package) with its gradients."""
    qd, kd, vd = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    b = Alibi(bias.slopes.cpu()) if bias is not None else None
    y = R.attention(qd, kd, vd, Normalizer("entmax", alpha=alpha), causal=causal, bias=b)[0]
    return y, torch.autograd.grad((y * grad_out.double().cpu()).sum(), (qd, kd, vd))


ALPHAS = [1.5, 2.0, 1.25]


def float32_cases():
    out = []
    for alpha in ALPHAS:
        for causal in (True, False):
            for alibi in (False, True):
                for T, S in ((17, 17), (20, 45), (100, 100)):
                    # the interpreter runs programs one by one: keep its grid small
                    cpu = (T == 17 or (T == 20 and causal)
                           or (T == 100 and alpha == 1.5 and causal and not alibi))
                    if CUDA or cpu:
                        out.append((alpha, causal, alibi, T, S))
    return out


@pytest.mark.parametrize("skip", ["0", "1"])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_tile_skipping_either_way_gives_the_same_function(knob, skip, alpha):
    """Both code paths of the knob triton_skip (test each tile for support or not), forward and
    backward, with ALiBi slopes steep enough that far tiles are empty."""
    knob(triton_skip=skip == "1")
    T = 100
    q, k, v = inputs(1, 2, T, 16, scale=2.0, seed=3)
    bias = Alibi(torch.tensor([0.0, 2.0], device=DEV))
    g = torch.randn(1, 2, T, 16, generator=torch.Generator().manual_seed(4)).to(DEV)
    y, grads = run(q, k, v, alpha, True, bias, g)
    yr, gr = ref64(q, k, v, alpha, True, bias, g)
    assert rel(y, yr) < 2e-5
    for got, want in zip(grads, gr):
        assert rel(got, want, floor=1e-3) < 5e-5


@pytest.mark.parametrize("alpha", [1.5, 1.25])
@pytest.mark.parametrize("causal,alibi,T,S", [(True, True, 20, 45), (False, False, 37, 23)])
def test_delta_from_o2_or_found_in_the_dq_kernel(knob, alpha, causal, alibi, T, S):
    """The backward's delta every way (the knob triton_delta_in_dq): from O2 kept by the
    forward (0), or summed inside the dQ kernel from the output alone, its row sums on the ALU
    (1) or the tensor cores (2): float64 parity each."""
    q, k, v = inputs(1, 2, T, 16, S=S, scale=3.0, seed=T + 2 * S)
    bias = Alibi(torch.tensor([0.5, 0.0], device=DEV)) if alibi else None
    g = torch.randn(1, 2, T, 16, generator=torch.Generator().manual_seed(9)).to(DEV)
    yr, gr = ref64(q, k, v, alpha, causal, bias, g)
    for flag in ("0", "1", "2"):
        knob(triton_delta_in_dq=int(flag))
        assert TB.delta_in_dq() == (flag != "0")
        assert TB._delta_mode(not TB.delta_in_dq(), S) == int(flag)
        y, grads = run(q, k, v, alpha, causal, bias, g)
        assert rel(y, yr) < 2e-5, flag
        for got, want in zip(grads, gr):
            assert torch.isfinite(got).all(), flag
            assert rel(got, want, floor=1e-3) < 5e-5, flag


def test_alibi_window_policy(knob):
    """By default the window runs for causal ALiBi rows longer than SHORT_ROWS keys."""
    n = TB.SHORT_ROWS
    assert TB.alibi_window(True, True, n + 1) and not TB.alibi_window(True, True, n)
    assert not TB.alibi_window(False, True, 4 * n) and not TB.alibi_window(True, False, 4 * n)
    assert not TB.alibi_window(True, True, 4 * n, tiled=False)
    knob(triton_window=False)
    assert not TB.alibi_window(True, True, 4 * n)
    knob(triton_window=True)
    assert TB.alibi_window(True, True, 2)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("T,S", [(90, 90), (61, 97)])
def test_alibi_window_skips_only_keys_without_weight(knob, alpha, T, S):
    """Causal ALiBi with steep slopes: the kernels visit only the key tiles that can hold
    weight (triton_window on: the forward and dQ start late, dK/dV stops early) or every
    tile (0); both match the float64 reference with gradients. The inputs are such that the
    bound does skip: rows of the last block reach back fewer keys than they see. (By default
    the window runs for rows longer than SHORT_ROWS; here it is forced on.)"""
    if not CUDA:
        knob(**{f"triton_blocks_{kind}": (16, 16, 1, 1) for kind in ("fwd", "dkdv", "dq")})
    q, k, v = inputs(1, 3, T, 16, S=S, scale=2.0, seed=T + S)
    slopes = torch.tensor([1.0, 0.25, 0.0], device=DEV)
    bias = Alibi(slopes)
    # the bound of the window for the first head at the last query block
    z = (q.double() @ k.double().transpose(-1, -2) / 4.0 - slopes.double()[:, None, None]
         * (torch.arange(T, device=DEV)[:, None] + S - T
            - torch.arange(S, device=DEV)[None, :]).abs())
    z = z.masked_fill(torch.ones(T, S, dtype=torch.bool, device=DEV).triu(S - T + 1), -1e9)
    am1 = alpha - 1.0
    reach = ((q.double().norm(dim=-1) * k.double().norm(dim=-1).amax(-1, keepdim=True) / 4.0
              - z.amax(-1)) * am1 + 1.0) / (slopes.double()[:, None] * am1)
    assert float(reach[0, 0, -16:].max()) + 16 < S - 16
    g = torch.randn(1, 3, T, 16, generator=torch.Generator().manual_seed(2)).to(DEV)
    yr, gr = ref64(q, k, v, alpha, True, bias, g)
    for flag in ("1", "0"):
        knob(triton_window=flag == "1")
        assert TB.alibi_window(True, True, S) == (flag == "1")
        y, grads = run(q, k, v, alpha, True, bias, g)
        assert rel(y, yr) < 2e-5, flag
        for a, b in zip(grads, gr):
            assert rel(a, b, floor=1e-3) < 5e-5, flag


@pytest.mark.parametrize("alpha,causal,alibi,T,S", float32_cases())
def test_float32_forward_and_gradients(alpha, causal, alibi, T, S):
    B, H = (2, 3) if CUDA else (1, 2)
    q, k, v = inputs(B, H, T, 24, S=S, scale=2.0, seed=T + S)
    bias = Alibi(nape_slopes(H).to(DEV)) if alibi else None
    g = torch.randn(B, H, T, 24, generator=torch.Generator().manual_seed(5)).to(DEV)
    y, grads = run(q, k, v, alpha, causal, bias, g)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    yr, gr = ref64(q, k, v, alpha, causal, bias, g)
    assert rel(y, yr) < 2e-5
    for got, want in zip(grads, gr):
        assert torch.isfinite(got).all()
        assert rel(got, want, floor=1e-3) < 5e-5
    # the torch backend in float64 agrees too (same function, different algorithm)
    yt = torch_backend.attention(q.double(), k.double(), v.double(),
                                 norm=Normalizer("entmax", alpha=alpha), causal=causal, bias=bias)
    assert rel(y, yt) < 2e-5


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("causal,alibi,T,S", [(True, True, 20, 45), (False, False, 37, 23),
                                              (True, False, 30, 31)])
def test_one_tile_forward_matches_the_tiled_one_and_float64(knob, alpha, causal, alibi,
                                                            T, S):
    """The forward that keeps all keys of a row in one tile (short rows) and the tiled one:
    both at float64 parity, gradients included (causal with S > T: rows see keys ahead)."""
    q, k, v = inputs(1, 2, T, 16, S=S, scale=2.0, seed=T * S)
    bias = Alibi(torch.tensor([0.5, 0.0], device=DEV)) if alibi else None
    g = torch.randn(1, 2, T, 16, generator=torch.Generator().manual_seed(7)).to(DEV)
    yr, gr = ref64(q, k, v, alpha, causal, bias, g)
    outs = {}
    for limit in ("64", "0"):  # 64: one tile for these rows; 0: the tiled forward
        knob(triton_one_tile=int(limit))
        assert (TB._one_tile_blocks(S, 16, DEV) is not None) == (limit != "0")
        knob(triton_blocks_fwd=(16, 16, 1, 1))  # the tiled forward's blocks: one tile stays
        assert (TB._one_tile_blocks(S, 16, DEV) is not None) == (limit != "0")
        y, grads = run(q, k, v, alpha, causal, bias, g)
        assert rel(y, yr) < 2e-5, limit
        for got, want in zip(grads, gr):
            assert rel(got, want, floor=1e-3) < 5e-5, limit
        outs[limit] = y
    assert rel(outs["64"], outs["0"]) < 2e-5


@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("causal", [True, False])
def test_single_token(alpha, causal):
    q, k, v = inputs(1, 2, 1, 16)
    g = torch.randn_like(q)
    y, (dq, dk, dv) = run(q, k, v, alpha, causal, None, g)
    torch.testing.assert_close(y, v)  # one key: its value, gradient only through v
    assert dq.abs().max() < 1e-5 and dk.abs().max() < 1e-5
    torch.testing.assert_close(dv, g)


def test_rows_on_simplex_with_exact_zeros(knob):
    if not CUDA:  # several tiles per row in the interpreter too
        knob(**{f"triton_blocks_{kind}": (16, 16, 1, 1) for kind in ("fwd", "dkdv", "dq")})
    T = 40
    q, k, _ = inputs(1, 2, T, 40, scale=3.0)
    eye = torch.eye(T, device=DEV).expand(1, 2, T, T).contiguous()
    P = TB.attention(q, k, eye, norm=Normalizer("entmax", alpha=1.5), causal=True)
    assert (P >= 0).all() and (P.triu(1) == 0).all()
    torch.testing.assert_close(P.sum(-1), torch.ones(1, 2, T, device=DEV))
    assert (P == 0).sum() > P.numel() // 2


@pytest.mark.parametrize("alpha", [1.5, 1.25])
def test_extreme_logits(alpha):
    q, k, v = inputs(1, 2, 48, 16)
    q = q * (1e4 / (q.norm(dim=-1, keepdim=True) * k.norm(dim=-1).amax() / 4.0))
    g = torch.randn_like(q)
    y, grads = run(q, k, v, alpha, True, Alibi(torch.tensor([0.5, 0.0], device=DEV)), g)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in grads)
    yr, _ = ref64(q, k, v, alpha, True, Alibi(torch.tensor([0.5, 0.0])), g)
    assert rel(y, yr) < 1e-4


def plain_torch(q, k, v, alpha, dtype):
    """What plain torch gets at a low dtype: scores and P @ V at that dtype (causal)."""
    z = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool, device=z.device).triu(1)
    p = R.normalize(z.double().masked_fill(mask, float("-inf")), Normalizer("entmax", alpha=alpha))
    return p.to(dtype) @ v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_half_precision_within_2x_of_plain_torch(dtype, alpha):
    if not CUDA and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter multiplies bf16 tiles as raw uint16 (CUDA only)")
    T, D = (1025, 64) if CUDA else (70, 32)
    q, k, v = inputs(1, 4 if CUDA else 2, T, D, dtype=dtype, seed=3)
    y = TB.attention(q, k, v, norm=Normalizer("entmax", alpha=alpha), causal=True)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = R.attention(q.double().cpu(), k.double().cpu(), v.double().cpu(),
                      Normalizer("entmax", alpha=alpha), causal=True)[0]
    base = plain_torch(q, k, v, alpha, dtype)
    assert rel(y, ref) <= 2 * rel(base, ref), (rel(y, ref), rel(base, ref))


@pytest.mark.skipif(not CUDA, reason="CUDA sizes")
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_head_dims_fwd_bwd(D, dtype, causal):
    T, H = 777, 4
    q, k, v = inputs(1, H, T, D, dtype=dtype, seed=D)
    bias = Alibi(nape_slopes(H).cuda())
    g = torch.randn_like(q)
    y, grads = run(q, k, v, 1.5, causal, bias, g)
    yr, gr = ref64(q, k, v, 1.5, causal, bias, g)
    # plain torch at this dtype: scores and P @ V at that dtype, float64 entmax
    z = R.dense_scores(q.double().cpu().to(dtype).double(), k.double().cpu(), causal=causal,
                       bias=Alibi(bias.slopes.cpu()))
    base = (R.normalize(z, Normalizer("entmax", alpha=1.5)).to(dtype) @ v.cpu())
    assert rel(y, yr) <= 2 * max(rel(base, yr), 1e-3)
    for got, want in zip(grads, gr):
        assert torch.isfinite(got).all()
        assert rel(got, want) < 5e-2


@pytest.mark.skipif(not CUDA, reason="CUDA only")
def test_auto_picks_triton_on_cuda_unless_opted_out(knob):
    from attentions.backends import resolve

    mod = resolve("auto", Normalizer("entmax", alpha=1.5), torch.device("cuda"),
                  Alibi(torch.ones(2, device="cuda")))
    assert mod.NAME == "triton"
    assert resolve("auto", Normalizer("softmax"), torch.device("cuda")).NAME != "triton"
    knob(triton_auto=False)
    assert resolve("auto", Normalizer("entmax", alpha=1.5), torch.device("cuda")).NAME == "torch"


def test_auto_never_takes_the_interpreter():
    from attentions.backends import resolve

    assert resolve("auto", Normalizer("entmax", alpha=1.5), torch.device("cpu")).NAME != "triton"


def test_contract_entry_points():
    assert TB.usable()
    assert TB.supports(Normalizer("entmax", alpha=1.5), torch.device(DEV), None)
    assert TB.supports(Normalizer("entmax", alpha=1.25), torch.device(DEV), Alibi(torch.ones(2)))
    assert not TB.supports(Normalizer("softmax"), torch.device(DEV), None)
    assert not TB.supports(Normalizer("entmax"), torch.device(DEV), torch.zeros(3, 3))
    # float64 goes to the torch backend (the contract's 1e-10 checks), same function
    q, k, v = inputs(1, 2, 9, 8, dtype=torch.float64)
    y = TB.attention(q, k, v, norm=Normalizer("entmax", alpha=1.5), causal=True)
    assert y.dtype == torch.float64


def test_importing_attentions_does_not_import_triton():
    code = "import sys, attentions; attentions.backends; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_sm90_build_uses_tensor_cores_in_every_pass():
    """The kernels compiled ahead of time for an H100 (no GPU needed): every loop that streams
    tiles issues wgmma (HGMMA), so no pass fell back to the slow mma/FMA path, and the forward
    stays in registers (no local memory)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from tests.tools import triton_sass as S; out = {}\n"
            "for kind in ('fwd', 'dkdv', 'dq'):\n"
            "    c, sass, use = S.compile_kernel(kind); out[kind] = [S.loops(sass), "
            "S.resources(use)]\n"
            "c, sass, use = S.compile_kernel('fwd', one_tile=128)\n"
            "out['one'] = [sass.count('HGMMA'), S.resources(use)]\n"
            "print(json.dumps(out))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True, timeout=600).stdout  # tests.tools from here
    import json

    found = json.loads(out.strip().splitlines()[-1])
    hgmma, res = found.pop("one")  # the one-tile forward: tensor cores, no local memory
    assert hgmma > 0 and res["local"] == 0
    for kind, (loops, _res) in found.items():
        tile_loops = [lp for lp in loops if lp["ops"].get("LDGSTS")]  # loops streaming tiles
        # forward: max, threshold and output passes, interior and edge each; backward: 2 or 3
        assert len(tile_loops) >= (6 if kind == "fwd" else 2), kind
        assert all(lp["ops"].get("HGMMA") for lp in tile_loops), kind
    assert found["fwd"][1]["local"] == 0


def test_kernels_are_operators_the_compiler_sees():
    """The forward and backward run as ``torch.library`` operators: their fake (shape)
    functions, schema and autograd registration pass torch's own checks, and a function that
    calls the kernels compiles as one graph (``fullgraph=True`` fails on any graph break)."""
    q, k, v = inputs(1, 2, 37, 16, torch.float32, seed=3)
    slopes = nape_slopes(2).to(DEV)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    torch.library.opcheck(TB._fwd_op, (q, k, v, slopes, True, 1.5, True, 0.25, True),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
    norm = Normalizer("entmax", alpha=1.5)

    def f(q, k, v):
        return TB.attention(q, k, v, norm=norm, causal=True, bias=Alibi(slopes)) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if not CUDA else "inductor")
    y_ref, g_ref = f(q, k, v), torch.autograd.grad(f(q, k, v).sum(), (q, k, v))
    y = compiled(q, k, v)
    g = torch.autograd.grad(compiled(q, k, v).sum(), (q, k, v))
    assert rel(y, y_ref) < 1e-6
    assert all(rel(a, b) < 1e-6 for a, b in zip(g, g_ref))
