"""The settings (suite/settings.py): one module reads the SUITE_* variables; a setting that can
change a result is in the config hash, travels with the cell and labels its leaderboard row;
the table in docs/settings.md is the module's."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from attentions import SpecError, knobs
from results.leaderboard import build
from suite import settings as S
from suite.cli import main
from suite.run import plan

from .conftest import ROOT, runs

READS = re.compile(r"""(environ(\.get)?\s*[\(\[]|getenv\s*\()\s*f?["']SUITE_""")


def test_one_module_reads_the_suite_variables():
    """No module but suite/settings.py looks a SUITE_* variable up (it reads them all in one
    pass over the environment, ``from_env``), and the attentions package reads no environment
    variable of the suite at all."""
    readers = sorted(str(p.relative_to(ROOT)) for pkg in ("suite", "attentions", "tasks", "results")
                     for p in (ROOT / pkg).rglob("*.py") if READS.search(p.read_text()))
    assert readers == []
    source = "".join(p.read_text() for p in (ROOT / "attentions").rglob("*.py"))
    assert set(re.findall(r"(?:environ(?:\.get)?|getenv)\W+(\w+)", source)) == {"TRITON_INTERPRET"}
    assert "for key, raw in environ.items():" in (ROOT / "suite/settings.py").read_text()
    # and every SUITE_* variable the code or docs name is a setting (tests' own gates aside)
    named = set()
    for path in [*ROOT.glob("suite/**/*.py"), *ROOT.glob("attentions/**/*.py"),
                 *ROOT.glob("results/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]:
        named |= set(re.findall(r"\bSUITE_[A-Z_]*[A-Z]\b", path.read_text()))
    assert named - set(S.BY_ENV) == set()


def test_the_docs_table_is_the_modules():
    doc = (ROOT / "docs/settings.md").read_text()
    begin, end = doc.index("-->", doc.index("settings table: begin")) + 4, \
        doc.index("<!-- settings table: end")
    assert doc[begin:end].strip() == S.markdown_table()


def test_the_environment_is_read_and_checked():
    got = S.from_env({"SUITE_TRITON_SKIP": "1", "SUITE_TRITON_BLOCKS_FWD": "64,32,4,2",
                      "SUITE_COMPILE": "0", "SUITE_CLAIM_TIMEOUT": "30",
                      "SUITE_DATA_WORKERS": "", "HOME": "/root"})
    assert got.kernels.triton_skip is True and got.kernels.triton_blocks_fwd == (64, 32, 4, 2)
    assert got.step.compile is False and got.store.claim_timeout == 30.0
    assert got.step.data_workers is None  # empty: the default
    assert S.from_env({}) == S.Settings()
    for env, said in [({"SUITE_TRITON_BLOCKS_FWD": "64,32"}, "give 4 whole numbers"),
                      ({"SUITE_TRITON_SKIP": "maybe"}, "give 1 or 0"),
                      ({"SUITE_TRITON_DELTA_IN_DQ": "3"}, "give one of 0, 1, 2"),
                      ({"SUITE_CPU_THREADS": "0"}, "give a whole number >= 1"),
                      ({"SUITE_GIT_COMMIT": "main"}, "hex SHA")]:
        (key, value), = env.items()
        with pytest.raises(SpecError, match=re.escape(f"{key}={value!r}: ") + ".*" + said):
            S.from_env(env)
    with pytest.warns(UserWarning, match="SUITE_TRITON_SKP is not a setting.*SUITE_TRITON_SKIP"):
        S.from_env({"SUITE_TRITON_SKP": "1"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.from_env({"SUITE_TEST_GATE": "/tmp/x"})  # far from every setting: no warning


def test_command_line_and_profile_assignments():
    base = S.from_env({"SUITE_TRITON_SKIP": "1", "SUITE_COMPILE": "0"})
    got = S.changed(base, ["triton.skip=0", "ray.attempts=5"])
    assert got.kernels.triton_skip is False and got.cluster.ray_attempts == 5
    assert got.step.compile is False  # the environment's, where not changed
    with pytest.raises(SpecError, match="unknown setting 'triton.skp'; the settings are "
                                        "triton.skip, "):
        S.changed(base, ["triton.skp=1"])
    with pytest.raises(SpecError, match="'triton.skip': give NAME=VALUE"):
        S.changed(base, ["triton.skip"])
    with pytest.raises(SpecError, match="--set ray.attempts=0: give a whole number >= 1"):
        S.changed(base, ["ray.attempts=0"])


def test_result_changing_settings_enter_the_config_hash_on_their_device():
    def cell(device, *assignments):
        previous = S.use(S.changed(S.Settings(), assignments))
        try:
            return plan(["entmax"], ["flip_flop"], "smoke", 1, device, check_device=False)[0]
        finally:
            S.use(previous)

    default = cell("cpu")
    assert default.settings == () and not any(k.startswith("setting.")
                                              for k in default.config())
    # a kernel knob of the CPU's backends, the CPU thread count: another config, said so
    for assignment, key, value in [("torch.chunk_elems=4096", "torch.chunk_elems", "4096"),
                                   ("cpu.threads=2", "cpu.threads", "2")]:
        other = cell("cpu", assignment)
        assert other.settings == ((key, value),)
        assert other.config()[f"setting.{key}"] == value
        assert other.config_hash != default.config_hash
        assert other.name.endswith(f"| {key}={value}")
    # a Triton knob does not act on the CPU, and what changes no result is never config
    assert cell("cpu", "triton.skip=1").config_hash == default.config_hash
    assert cell("cpu", "step.data_workers=2", "ray.attempts=1").config_hash == \
        default.config_hash
    on_cuda = cell("cuda", "triton.skip=1", "step.cuda_graphs=0")
    assert on_cuda.settings == (("triton.skip", "1"),)
    assert on_cuda.config_hash != cell("cuda").config_hash


def test_a_cell_trains_with_its_own_settings_whatever_the_process_has():
    previous = S.use(S.from_env({"SUITE_TRITON_SKIP": "1", "SUITE_TORCH_CHUNK_ELEMS": "999",
                                 "SUITE_DATA_WORKERS": "2"}))
    try:
        with S.for_run((("torch.chunk_elems", "4096"),)) as inside:
            assert knobs.current().torch_chunk_elems == 4096
            assert knobs.current().triton_skip is None  # the cell's: the default
            assert inside.step.data_workers == 2  # changes no result: the process's
        assert knobs.current().torch_chunk_elems == 999 and knobs.current().triton_skip is True
    finally:
        S.use(previous)


PROBE_PLUGIN = '''
import json, os
import torch
import attentions
from attentions import knobs


@attentions.register("knob_probe_test")
def knob_probe(q, k, v, *, causal, bias=None):
    """softmax that writes the torch chunk knob it sees to $PROBE_OUT."""
    with open(os.environ["PROBE_OUT"], "a") as fh:
        fh.write(json.dumps(knobs.current().torch_chunk_elems) + "\\n")
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        T, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(S - T + 1), float("-inf"))
    if bias is not None:
        s = s + bias
    return s.softmax(-1) @ v
'''


def test_a_setting_labels_the_run_and_the_leaderboard_row(store, tmp_path, monkeypatch, capsys):
    """`suite run --set` end to end: the knob is in effect where the cell trains (a plugin
    reads it), the run's params and tags say it, its config is another cell (the default one
    trains beside it), and the leaderboard labels the two rows instead of averaging them."""
    plugin = tmp_path / "probe_plugin.py"
    plugin.write_text(PROBE_PLUGIN)
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("PROBE_OUT", str(seen))
    argv = ["run", "--profile", "smoke", "--attention", "knob_probe_test", "--plugin",
            str(plugin), "--tracking-uri", store, "--no-progress"]
    assert main([*argv, "--set", "torch.chunk_elems=65536"]) == 0
    assert set(seen.read_text().split()) == {"65536"}
    seen.unlink()
    assert main(argv) == 0  # the default: another cell, trained too
    assert set(seen.read_text().split()) == {"null"}
    assert "skipped" not in capsys.readouterr().out
    got = {r.data.params.get("setting.torch.chunk_elems"): r for r in runs(store)}
    assert set(got) == {"65536", None}
    assert got["65536"].data.tags["suite.settings"] == "torch.chunk_elems=65536"
    assert got[None].data.tags["suite.settings"] == "default"
    tab, _ = build(store)
    assert set(tab["attention"].to_list()) == {
        "knob_probe_test [torch.chunk_elems=65536]", "knob_probe_test [torch.chunk_elems=default]"}
    assert set(tab["seeds"].to_list()) == {1}


def test_a_bad_setting_stops_the_command_before_anything_runs(store, monkeypatch, capsys):
    monkeypatch.setenv("SUITE_TRITON_TAU_PASSES", "two")
    assert main(["run", "--profile", "smoke", "--attention", "softmax",
                 "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert "SUITE_TRITON_TAU_PASSES='two': give 2 whole numbers" in err
    assert not runs(store) and not Path("results/checkpoints").exists()
    monkeypatch.delenv("SUITE_TRITON_TAU_PASSES")
    assert main(["run", "--profile", "smoke", "--attention", "softmax", "--set", "cpu.threads",
                 "--tracking-uri", store]) == 2
    assert "give NAME=VALUE" in capsys.readouterr().err and not runs(store)
