"""Benchmarks run only when asked for: ``pytest tests/bench -m bench --benchmark-only``
(``tox -e bench``). Otherwise every test under tests/bench is skipped, so the normal test
command stays fast."""

from __future__ import annotations

import pytest


def _selected(config) -> bool:
    markexpr = (config.getoption("markexpr", "") or "").replace(" ", "")
    only = bool(config.getoption("benchmark_only", False))
    return only or (markexpr.startswith("bench") and "notbench" not in markexpr)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="benchmark: run with -m bench --benchmark-only")
    for item in items:
        if "tests/bench/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("bench/"):
            item.add_marker(pytest.mark.bench)
            if not _selected(config):
                item.add_marker(skip)
