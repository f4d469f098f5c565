"""The numba backend against the torch backend and float64 dense references: forward and
gradients, odd sizes, causal and not, ALiBi and dense biases, extreme logits, every alpha."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from attentions.backends import torch_backend
from attentions.normalizer import Alibi, Normalizer

from . import reference
from .conftest import ROOT

numba_backend = pytest.importorskip("attentions.backends.numba_backend")
pytest.importorskip("numba")

NORMS = {
    "softmax": Normalizer("softmax"),
    "entmax15": Normalizer("entmax", alpha=1.5),
    "sparsemax": Normalizer("entmax", alpha=2.0),
    "entmax125": Normalizer("entmax", alpha=1.25),
    "entmax175": Normalizer("entmax", alpha=1.75),
}
ALIBI = Alibi(torch.tensor([0.5, 0.0]))


def _qkv(B, H, T, S, D, dtype=torch.float64, scale=1.0):
    return [torch.randn(B, H, n, D, dtype=dtype) * scale for n in (T, S, S)]


def _both(q, k, v, norm, **kw):
    """Forward and input gradients (for a fixed random cotangent) of numba and torch."""
    res = []
    g = None
    for mod in (numba_backend, torch_backend):
        xs = [x.clone().requires_grad_() for x in (q, k, v)]
        out = mod.attention(*xs, norm=norm, **kw)
        if g is None:
            g = torch.randn_like(out)
        (out * g).sum().backward()
        res.append((out.detach(), *(x.grad for x in xs)))
    return res


@pytest.mark.parametrize("name", list(NORMS))
@pytest.mark.parametrize("T", [1, 97, 1025])
def test_forward_matches_dense_float64(name, T):
    norm = NORMS[name]
    q, k, v = _qkv(1, 2, T, T, 8, scale=2.0)
    out = numba_backend.attention(q, k, v, norm=norm, causal=True, bias=None)
    ref, _ = reference.attention(q, k, v, norm, causal=True)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", list(NORMS))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [None, "alibi"])
def test_matches_torch_backend_with_gradients(name, causal, bias):
    norm = NORMS[name]
    b = ALIBI if bias else None
    q, k, v = _qkv(2, 2, 97, 97, 16, scale=2.0)
    (o1, *g1), (o2, *g2) = _both(q, k, v, norm, causal=causal, bias=b)
    torch.testing.assert_close(o1, o2, atol=1e-10, rtol=1e-9)
    for a, e in zip(g1, g2):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("name", list(NORMS))
def test_float32_matches_float64_reference(name):
    norm = NORMS[name]
    q, k, v = _qkv(1, 2, 333, 333, 16, dtype=torch.float32, scale=1.5)
    out = numba_backend.attention(q, k, v, norm=norm, causal=True, bias=ALIBI)
    assert out.dtype == torch.float32
    ref, _ = reference.attention(q, k, v, norm, causal=True, bias=ALIBI)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    (o1, *g1), (o2, *g2) = _both(q[:, :, :200], k, v, norm, causal=True, bias=ALIBI)
    torch.testing.assert_close(o1, o2, atol=2e-5, rtol=1e-4)
    for a, e in zip(g1, g2):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", list(NORMS))
@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_float64(name, causal):
    norm = NORMS[name]
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 5, 7, 3))
    f = lambda q, k, v: numba_backend.attention(q, k, v, norm=norm, causal=causal, bias=ALIBI)
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(NORMS))
def test_rows_on_simplex_with_extreme_logits(name):
    """V = identity (D = S) returns the attention matrix itself; logits of +-1e4."""
    norm = NORMS[name]
    T = 33
    q = torch.randn(1, 2, T, 4, dtype=torch.float32) * 1e4 / 2
    k = torch.randn(1, 2, T, 4, dtype=torch.float32)
    v = torch.eye(T, dtype=torch.float32).expand(1, 2, T, T)
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    p = numba_backend.attention(qg, kg, vg, norm=norm, causal=True, bias=None, sm_scale=1.0)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 2, T), atol=1e-5, rtol=0)
    assert (p >= 0).all()
    assert (p.triu(1) == 0).all()  # causal zeros
    p.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (qg, kg, vg))


@pytest.mark.parametrize("name", ["softmax", "entmax15", "entmax125"])
def test_more_keys_than_queries_and_dense_bias(name):
    """Queries aligned to the end of the keys; a constant dense bias with -inf entries,
    including a row that sees nothing (its output is 0, as in the torch backend)."""
    norm = NORMS[name]
    q, k, v = _qkv(1, 2, 6, 11, 4)
    bias = torch.randn(1, 2, 6, 11, dtype=torch.float64)
    bias[..., :, 3] = float("-inf")
    bias[0, 1, 0, :] = float("-inf")
    for causal in (True, False):
        (o1, *g1), (o2, *g2) = _both(q, k, v, norm, causal=causal, bias=bias)
        torch.testing.assert_close(o1, o2, atol=1e-10, rtol=1e-9)
        for a, e in zip(g1, g2):
            torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-8)
    # fewer keys than queries: the first queries see nothing under the causal alignment
    q, k, v = _qkv(1, 2, 9, 4, 4)
    (o1, *g1), (o2, *g2) = _both(q, k, v, norm, causal=True, bias=None)
    torch.testing.assert_close(o1, o2, atol=1e-10, rtol=1e-9)
    assert (o1[:, :, :5] == 0).all()


def test_half_precision_is_upcast():
    q, k, v = _qkv(1, 2, 40, 40, 8, dtype=torch.bfloat16)
    norm = NORMS["entmax15"]
    out = numba_backend.attention(q, k, v, norm=norm, causal=True, bias=None)
    assert out.dtype == torch.bfloat16
    ref = torch_backend.attention(q, k, v, norm=norm, causal=True, bias=None)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_supports():
    cpu = torch.device("cpu")
    assert numba_backend.usable()
    for norm in NORMS.values():
        assert numba_backend.supports(norm, cpu, None)
        assert numba_backend.supports(norm, cpu, ALIBI)
        assert not numba_backend.supports(norm, torch.device("cuda"), None)
    assert numba_backend.supports(Normalizer("topk", k=4), cpu, None)
    assert not numba_backend.preferred(Normalizer("topk", k=4), cpu, ALIBI, size=(1, 2, 64, 64))
    assert not numba_backend.preferred(NORMS["softmax"], cpu, None)  # SDPA is faster there
    assert numba_backend.preferred(NORMS["softmax"], cpu, ALIBI)
    assert numba_backend.preferred(NORMS["entmax15"], cpu, None)
    assert not numba_backend.supports(NORMS["entmax15"], cpu, torch.zeros(3, requires_grad=True))


def test_threads_setting_is_left_alone():
    n = torch.get_num_threads()
    q, k, v = _qkv(1, 3, 300, 300, 8, dtype=torch.float32)
    numba_backend.attention(q, k, v, norm=NORMS["entmax15"], causal=True, bias=None)
    assert torch.get_num_threads() == n


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_importing_attentions_does_not_import_numba():
    out = _run("import sys, attentions, attentions.backends.numba_backend; "
               "print('numba' in sys.modules)")
    assert out.strip() == "False"


def test_second_process_loads_kernels_from_the_cache():
    code = (
        "import torch\n"
        "from attentions.normalizer import Normalizer\n"
        "from attentions.backends import numba_backend as nb, numba_kernels as K\n"
        "q = torch.randn(1, 2, 50, 8)\n"
        "nb.attention(q, q, q, norm=Normalizer('entmax', alpha=1.5), causal=True, bias=None)\n"
        "print(sum(K.short_fwd.stats.cache_misses.values()),"  # 50 keys: the short kernels
        " sum(K.short_fwd.stats.cache_hits.values()))\n"
    )
    _run(code)  # fills the cache if a test above did not
    misses, hits = map(int, _run(code).split())
    assert misses == 0 and hits >= 1
