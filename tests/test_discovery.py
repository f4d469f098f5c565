"""Built-ins are found, not listed: a variant file dropped alone into a copy of ``attentions/``
and a task file dropped alone into a copy of ``tasks/`` are listed by ``suite list``, collected
by the generated contract tests, and pass them; the variant's learned length scaling reaches
the model's diagnostics through its class, with no name checked anywhere. Nothing but the two
new files differs from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow  # about half a minute: fresh interpreters over a copied tree

PACKAGES = ("attentions", "tasks", "suite", "results")
TESTS = ("__init__.py", "conftest.py", "reference.py", "test_contract.py", "test_tasks.py")

VARIANT = '''
"""A variant that exists only in the discovery test."""

from dataclasses import dataclass

import torch
from torch import nn

from .api import register
from .base import Attention, log_positions
from .normalizer import Normalizer


@dataclass(frozen=True)
class DroppedConfig:
    t_init: float = 0.5


@register("dropped_variant")
class Dropped(Attention):
    """dropped: entmax with q_i scaled by t_h * log(i + 2), t_h learned per scaled head."""

    Config = DroppedConfig

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        self.t = nn.Parameter(torch.full((self.n_scaled,), self.config.t_init))

    def normalizer(self):
        return Normalizer("entmax", alpha=1.5)

    def length_scale(self, x, T):
        logn = log_positions(T, 2.0, self.t.device, self.t.dtype)  # (T,)
        return self.t[None, :, None] * logn[None, None, :]  # (1, H_s, T)
'''

TASK = '''
"""A task that exists only in the discovery test."""

import dataclasses

import numpy as np

from .api import register
from .seq2seq import SymbolSeq2Seq


@register("dropped_task")
@dataclasses.dataclass(frozen=True)
class Rotate(SymbolSeq2Seq):
    """Rotate: the source shifted right by one symbol, the last one first."""

    def transform(self, src: np.ndarray) -> np.ndarray:
        return np.roll(src, 1, axis=1)
'''

PROBE = '''
import torch
from suite.model import Decoder, ModelConfig, Probe

model = Decoder(ModelConfig(vocab_size=9, n_heads=4, attention="dropped_variant:t_init=0.75"))
probe = Probe(rows=torch.tensor([[3, 6]]))
model.set_probe(probe)
model(torch.randint(0, 9, (1, 8)))
print(probe.stats[0]["scale"].tolist())
'''


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the packages and the generated tests, plus the two dropped-in files."""
    root = tmp_path_factory.mktemp("tree")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, root / pkg, ignore=skip)
    (root / "tests").mkdir()
    for name in TESTS:
        shutil.copy(ROOT / "tests" / name, root / "tests" / name)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")  # markers, test paths
    (root / "attentions" / "dropped_variant.py").write_text(VARIANT)
    (root / "tasks" / "dropped_task.py").write_text(TASK)
    return root


def run(tree: Path, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), "MLFLOW_TRACKING_URI": ""}
    out = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_the_copy_imports_from_the_copy(tree):
    out = run(tree, "-c", "import attentions, tasks; print(attentions.__file__, tasks.__file__)")
    assert out.split() == [str(tree / "attentions/__init__.py"), str(tree / "tasks/__init__.py")]


def test_suite_list_shows_both(tree):
    out = run(tree, "-m", "suite", "list")
    (variant,) = [ln for ln in out.splitlines() if ln.split()[:2] == ["attention",
                                                                      "dropped_variant"]]
    assert "torch" in variant and "t_h learned per scaled head" in variant
    (task,) = [ln for ln in out.splitlines() if ln.split()[:2] == ["task", "dropped_task"]]
    assert "the source shifted right by one symbol" in task


def test_generated_tests_collect_and_pass_both(tree):
    out = run(tree, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
              "tests/test_contract.py", "tests/test_tasks.py")
    ids = out.splitlines()
    assert sum("dropped_variant-torch-cpu" in i for i in ids) >= 10, out[-2000:]
    assert any("test_gradcheck_learned_parameters[dropped_variant-torch-cpu]" in i for i in ids)
    assert sum("[dropped_task]" in i for i in ids) >= 8, out[-2000:]
    out = run(tree, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_contract.py",
              "tests/test_tasks.py", "-k", "dropped_variant-torch-cpu or dropped_task",
              timeout=600)
    assert " passed" in out and "failed" not in out and "error" not in out


def test_the_model_reports_the_dropped_in_scaling(tree):
    """Diagnostics read the variant's own hook: mean t_h log(row + 2) over the probe rows."""
    import math

    scale = [float(v) for v in run(tree, "-c", PROBE).strip().strip("[]").split(",")]
    want = 0.75 * (math.log(5) + math.log(8)) / 2
    assert scale == pytest.approx([want, want], rel=1e-6)  # NAPE: 2 of 4 heads scaled
