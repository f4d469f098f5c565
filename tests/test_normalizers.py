"""Row normalizers against the independent ``entmax`` package, in float64, at odd sizes."""

import entmax as E
import pytest
import torch

from attentions import Normalizer
from attentions.backends import MODULES, load, resolve
from attentions.backends.torch_normalizers import entmax, normalize, sparsemax
from attentions.normalizer import KINDS

ALPHAS = [1.5, 2.0, 1.25, 1.75, 1.01]


def ref(z, alpha):
    if alpha == 1.5:
        return E.entmax15(z, dim=-1)
    if alpha == 2.0:
        return E.sparsemax(z, dim=-1)
    return E.entmax_bisect(z, alpha=alpha, dim=-1, n_iter=200)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("method", ["auto", "bisect"])
@pytest.mark.parametrize("n", [1, 2, 97, 1025, 5000])
def test_matches_entmax_package(alpha, method, n):
    z = torch.randn(6, n, dtype=torch.float64) * 3
    p = entmax(z, alpha, method=method)
    torch.testing.assert_close(p, ref(z, alpha), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.sum(-1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_exact_zeros_and_top_in_support(alpha):
    z = torch.randn(50, 200, dtype=torch.float64) * 2 / (alpha - 1)  # spread past the bracket
    p = entmax(z, alpha)
    assert (p == 0).any()
    assert (p.gather(-1, z.argmax(-1, keepdim=True)) > 0).all()
    assert (p <= 1).all()


def test_alpha_2_is_sparsemax_through_both_solvers():
    z = torch.randn(20, 333, dtype=torch.float64)
    torch.testing.assert_close(entmax(z, 2.0, method="bisect"), sparsemax(z), rtol=0, atol=1e-13)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("method", ["auto", "bisect"])
def test_gradcheck(alpha, method):
    z = (torch.randn(4, 9, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: entmax(t, alpha, method=method), (z,))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_masking_and_all_masked_but_one(alpha):
    z = torch.randn(5, 12, dtype=torch.float64)
    z[:, 7:] = float("-inf")
    z[0, 1:] = float("-inf")  # all masked but one
    z = z.requires_grad_()
    p = entmax(z, alpha)
    assert (p[:, 7:] == 0).all() and p[0, 0] == 1
    torch.testing.assert_close(p[:, :7], ref(z.detach()[:, :7], alpha), rtol=0, atol=1e-12)
    (g,) = torch.autograd.grad((p * torch.randn_like(p)).sum(), z)
    assert torch.isfinite(g).all() and (g[:, 7:] == 0).all()


@pytest.mark.parametrize("alpha", ALPHAS)
def test_fully_masked_row_gives_zeros_not_nan(alpha):
    z = torch.full((2, 5), float("-inf"), dtype=torch.float64)
    z[1, 2] = 0.0
    p = entmax(z, alpha)
    assert torch.equal(p[0], torch.zeros(5, dtype=torch.float64)) and p[1, 2] == 1


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_no_nan_where_the_package_fails(alpha, dtype):
    """entmax issue #30: logits around -1000 give NaN in half precision there."""
    z = (torch.randn(8, 64) - 1000).to(dtype)
    p = entmax(z, alpha)
    assert p.dtype == dtype and torch.isfinite(p).all()
    torch.testing.assert_close(p.double(), ref(z.double(), alpha), rtol=0, atol=1e-2)


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_extreme_logits(scale, alpha):
    z = torch.randn(7, 300, dtype=torch.float64) * scale
    p = entmax(z, alpha)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, ref(z, alpha), rtol=0, atol=1e-12)
    p32 = entmax(z.float(), alpha)
    assert torch.isfinite(p32).all()
    torch.testing.assert_close(p32.double(), p, rtol=0, atol=1e-5)


def test_topk_and_softmax():
    z = torch.randn(4, 50, dtype=torch.float64)
    torch.testing.assert_close(normalize(z, Normalizer("softmax")), torch.softmax(z, -1))
    p = normalize(z, Normalizer("topk", k=5))
    assert ((p > 0).sum(-1) == 5).all()
    kth = z.topk(5, -1).values[..., -1:]
    torch.testing.assert_close(p, torch.softmax(z.masked_fill(z < kth, float("-inf")), -1))


def test_alpha_out_of_range():
    with pytest.raises(ValueError, match=r"outside \(1, 2\]"):
        Normalizer("entmax", alpha=1.0)


@pytest.mark.parametrize("name", MODULES)
def test_backends_accept_only_the_kinds_they_name(name):
    """Backends take a normalizer by an allow-list of kinds: a kind added to ``Normalizer``
    later is refused by every backend that does not name it (never run as entmax)."""
    mod = load(name)
    if mod is None:
        pytest.skip(f"the {name} backend does not import here")
    assert mod.KINDS <= set(KINDS)
    future = Normalizer("softmax")
    object.__setattr__(future, "kind", "future_kind")  # as if Normalizer had grown a kind
    for device in ("cpu", "cuda"):
        assert not mod.supports(future, torch.device(device), None)
    for kind in mod.KINDS:  # on the device the backend runs on
        assert any(mod.supports(Normalizer(kind), torch.device(d), None) for d in ("cpu", "cuda"))


def test_auto_refuses_a_kind_no_backend_names():
    future = Normalizer("softmax")
    object.__setattr__(future, "kind", "future_kind")
    with pytest.raises(RuntimeError, match="no backend supports"):
        resolve("auto", future, torch.device("cpu"))
