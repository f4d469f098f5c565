"""Plain-function plugins and the position bias: the README's plugin (taken from README.md
itself) and a plugin that adds ``bias`` to softmax scores train and rank under every position
encoding; the bias a function gets is the ALiBi bias the kernels apply."""

import dataclasses
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch

import attentions
from results.leaderboard import build, ranking
from suite import profiles
from suite.executors.local import sweep
from suite.run import plan

README = Path(__file__).resolve().parent.parent / "README.md"

BIAS_PLUGIN = textwrap.dedent('''
    import torch
    import attentions

    @attentions.register("biased_softmax_test")
    def biased_softmax(q, k, v, *, causal, bias, temperature: float = 1.0):
        """softmax over q.k/sqrt(d) + bias, written out by hand."""
        z = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5 * temperature)  # (B, H, T, S)
        if bias is not None:
            z = z + bias
        if causal:
            T, S = z.shape[-2:]
            future = torch.ones(T, S, dtype=torch.bool, device=z.device).triu(S - T + 1)
            z = z.masked_fill(future, float("-inf"))
        return torch.softmax(z, -1) @ v  # (B, H, T, D)
''')


def readme_plugin() -> str:
    """The README's `my_attention.py`, verbatim."""
    block = re.search(r"```python\n(# my_attention\.py\n.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its plugin example"
    return block.group(1)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    (root / "my_attention.py").write_text(readme_plugin())
    (root / "biased.py").write_text(BIAS_PLUGIN)
    for name in ("my_attention.py", "biased.py"):
        attentions.load_plugin(str(root / name))
    return ["relu_attn:power=2", "biased_softmax_test"]


def test_a_function_gets_the_bias_the_kernels_apply(plugins):
    """Under ALiBi slopes the hand-written softmax + bias equals the built-in softmax given
    the compact Alibi: the dense tensor holds -slope * distance, query-aligned."""
    B, H, T, D = 2, 4, 7, 8
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    bias = attentions.Alibi(attentions.nape_slopes(H).double())
    mine = attentions.build("biased_softmax_test", n_heads=H, head_dim=D)
    ref = attentions.build("softmax", n_heads=H, head_dim=D, backend="torch")
    got = mine(q, k, v, bias=bias, causal=True)
    torch.testing.assert_close(got, ref(q, k, v, bias=bias, causal=True))
    assert not torch.allclose(got, ref(q, k, v, bias=None, causal=True))  # the bias counts
    seen = {}

    @attentions.register("bias_probe_test")
    def probe(q, k, v, *, causal, bias):
        seen["bias"] = bias
        return v

    try:
        attentions.build("bias_probe_test", n_heads=H, head_dim=D)(q, k, v, bias=bias)
        dense = seen["bias"]
        assert isinstance(dense, torch.Tensor) and dense.shape == (1, H, T, T)
        assert dense[0, 0, 5, 2].item() == pytest.approx(-1.0 * 3)  # head 0: slope 1
        assert dense[0, 1, 6, 0].item() == pytest.approx(-0.5 * 6)  # head 1: slope 1/2
        assert dense[0, H - 1].abs().max().item() == 0  # a NoPE head
        attentions.build("bias_probe_test", n_heads=H, head_dim=D)(q, k, v, bias=None)
        assert seen["bias"] is None
    finally:
        attentions.REGISTRY.unregister("bias_probe_test")


def test_a_function_without_bias_is_given_none():
    calls = []

    @attentions.register("no_bias_test")
    def plain(q, k, v, *, causal):
        calls.append(causal)
        return v

    try:
        attn = attentions.build("no_bias_test", n_heads=2, head_dim=4)
        x = torch.randn(1, 2, 3, 4)
        assert attn(x, x, x, bias=attentions.Alibi(attentions.nape_slopes(2))) is x
        assert calls == [True]
    finally:
        attentions.REGISTRY.unregister("no_bias_test")


@pytest.mark.parametrize("pe", ["nape", "rope", "alibi", "nope"])
def test_plugins_train_and_rank_under_every_position_encoding(plugins, pe, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cells = plan(plugins, ["flip_flop"], "smoke", 1, "cpu")
    prof = dataclasses.replace(profiles.get("smoke"), pe=pe)
    cells = [dataclasses.replace(c, profile=prof) for c in cells]
    assert sweep(cells, store, progress=False) == 0
    tab, text = build(store)
    names = {"relu_attn:power=2", "biased_softmax_test"}
    assert set(tab["attention"].to_list()) == names
    ranked = ranking(tab.filter(tab["task"] == "flip_flop"))
    assert {a for a, _, _ in ranked} == names
    assert all(score is not None and math.isfinite(score) for _, score, _ in ranked)
    rows = [line.split()[0] for line in text.splitlines()[3:5]]
    assert rows == [a for a, _, _ in ranked]  # the table lists them in rank order
