"""Third-party tasks arrive through a plugin file and through the ``suite.tasks`` entry-point
group (a real ``*.dist-info`` on the path of a fresh interpreter, no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

import tasks

from .conftest import ROOT

PLUGIN = '''
import dataclasses
import numpy as np
import tasks
from tasks.base import as_batch


@tasks.register("{name}")
@dataclasses.dataclass(frozen=True)
class Echo(tasks.Task):
    """Echo: label each token with itself."""

    vocab: int = 5

    @property
    def vocab_size(self):
        return self.vocab + 1

    @property
    def pad_id(self):
        return self.vocab

    def generate(self, rng, length, batch_size, split):
        src = rng.integers(0, self.vocab, size=(batch_size, length))
        return as_batch(src, src, length)

    def decode(self, batch, i):
        return {{"source": batch.tokens[i].tolist()}}
'''


def test_plugin_file_registers_a_task(tmp_path):
    name = f"echo_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "echo_plugin.py"
    path.write_text(PLUGIN.format(name=name))
    try:
        tasks.load_plugin(str(path))
        assert name in tasks.names()
        task = tasks.get(f"{name}:vocab=3")
        assert task.spec == f"{name}:vocab=3"
        batch = task.sample(task.rng(0, "train"), (4, 9), 6)
        assert int(batch.tokens.max()) <= 3 and set(batch.lengths.tolist()) <= set(range(4, 10))
        assert "source: [" in tasks.show(name, length=12)
        with pytest.raises(tasks.SpecError, match="registered already"):
            tasks.register(name)(type("Other", (tasks.Task,), {}))
    finally:
        tasks.REGISTRY.unregister(name)
    assert name not in tasks.names()


def test_register_refuses_a_non_task():
    with pytest.raises(tasks.SpecError, match="subclass of tasks.Task"):
        tasks.register("not_a_task")(dict)


def test_missing_plugin_file_is_a_clear_error(tmp_path):
    with pytest.raises(tasks.SpecError, match="does not exist"):
        tasks.load_plugin(str(tmp_path / "nope.py"))


def test_entry_point_registers_a_task(tmp_path):
    (tmp_path / "echo_ep_plugin.py").write_text(PLUGIN.format(name="echo_ep"))
    info = tmp_path / "echo_ep_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-ep-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[suite.tasks]\necho_ep = echo_ep_plugin\n")
    script = textwrap.dedent("""
        import tasks
        task = tasks.get("echo_ep:vocab=4")
        batch = task.sample(task.rng(1, "eval"), 7, 2)
        print(task.spec, sorted(tasks.names())[:3], tuple(batch.tokens.shape))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "echo_ep:vocab=4",
        "['copy',",
        "'echo_ep',",
        "'flip_flop']",
        "(2,",
        "7)",
    ]
