"""Speed of causal float32 attention, B=1, H=8, D=64, T in {1024, 4096, 16384}: numba entmax
(alpha 1.5 and 1.25) and numba softmax against torch SDPA softmax and the ``entmax`` package
over materialized scores (up to T = 4096), forward and forward+backward, all in one run.

pytest-benchmark groups the rows by (T, pass), so each group reads as a ratio to sdpa. The
same table with ratios and memory: ``suite bench`` (``suite.bench.cpu.run``)."""

from __future__ import annotations

import pytest
import torch

from suite.bench import cpu as bench

pytestmark = pytest.mark.bench

CASES = [
    pytest.param(name, T, p, id=f"{name}-T{T}-{p}")
    for T in bench.LENGTHS
    for name in bench.IMPLS
    for p in bench.PASSES
]


@pytest.fixture(scope="module")
def warm():
    """Every implementation called once at a small size: kernels compiled or loaded."""
    small = bench.inputs(64)
    for name in bench.IMPLS:
        if bench.applies(name, 64):
            for p in bench.PASSES:
                bench.call(bench.implementation(name), *small, p)
    return True


@pytest.mark.parametrize("name,T,pass_", CASES)
def test_attention_speed(benchmark, warm, name, T, pass_):
    if not bench.applies(name, T):
        pytest.skip(f"{name} materializes T x T scores: not run beyond T={bench.PKG_MAX_T}")
    fn = bench.implementation(name)
    q, k, v, dout = bench.inputs(T)
    benchmark.group = f"T={T} {pass_}"
    benchmark.extra_info.update(impl=name, T=T, threads=torch.get_num_threads())
    slow = T >= 16384 or name == "entmax_pkg_entmax15" and T >= 4096
    benchmark.pedantic(bench.call, args=(fn, q, k, v, dout, pass_),
                       rounds=1 if slow else 3, iterations=1, warmup_rounds=0 if slow else 1)
