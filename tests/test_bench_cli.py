"""`suite bench` end to end at a tiny size: the table is printed and logged, and the
leaderboard's speed table reads it back (no timing is asserted: speed lives in benchmarks)."""

import torch
from mlflow.tracking import MlflowClient

from attentions import Alibi, Normalizer
from attentions.backends import resolve
from suite.cli import main

from .conftest import ROOT


def test_suite_bench_logs_a_run_the_leaderboard_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["bench", "--lengths", "128", "--repeats", "1", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "numba_entmax15" in out and "sdpa_softmax" in out and "logged: bench run" in out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert run.info.status == "FINISHED"
    assert any(k.startswith("median_ms.numba_entmax15") for k in run.data.metrics)
    assert main(["leaderboard", "--tracking-uri", uri, "--no-log"]) == 0
    assert "numba_entmax15" in capsys.readouterr().out


def test_auto_backend_choice_on_cpu():
    """``auto`` on the CPU (numba_backend.MIN_KEYS): SDPA for softmax without a bias; the numba
    kernels for the entmax family at every length (its short-row kernels), and for softmax and
    top-k under a bias from 256 keys on (below, one SDPA call with a float mask is faster)."""
    cpu = torch.device("cpu")
    assert resolve("auto", Normalizer("softmax"), cpu).NAME == "torch"  # SDPA is faster
    assert resolve("auto", Normalizer("softmax"), cpu, Alibi(torch.ones(2))).NAME == "numba"
    assert resolve("auto", Normalizer("entmax", alpha=1.25), cpu).NAME == "numba"
    assert resolve("auto", Normalizer("topk", k=4), cpu).NAME == "numba"
    entmax = Normalizer("entmax", alpha=1.5)
    assert resolve("auto", entmax, cpu, None, (32, 4, 64, 64)).NAME == "numba"
    assert resolve("auto", entmax, cpu, None, (1, 4, 1024, 1024)).NAME == "numba"
    alibi = Alibi(torch.ones(4))
    for kind in (Normalizer("softmax"), Normalizer("topk", k=4)):
        assert resolve("auto", kind, cpu, alibi, (8, 4, 128, 128)).NAME == "torch"
        assert resolve("auto", kind, cpu, alibi, (8, 4, 256, 256)).NAME == "numba"
        assert resolve("auto", kind, cpu, alibi, (1, 4, 4096, 4096)).NAME == "numba"


PUBLISHED = "results/published/h100-triton-bench-2026-11-27.json"


def test_suite_bench_logs_a_gpu_table_written_elsewhere(tmp_path, capsys):
    """The GPU table of the README (measured on an H100 without a tracking server) goes into
    a store through `suite bench --from-json`; ratios are recomputed against the SDPA rows."""

    path = ROOT / PUBLISHED
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["bench", "--from-json", str(path), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "triton_entmax15" in out and "logged: bench run" in out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert run.info.status == "FINISHED"
    sdpa = [k for k in run.data.metrics if k.startswith("median_ms.sdpa_softmax")]
    ours = [k for k in run.data.metrics if k.startswith("median_ms.triton_entmax15")]
    assert sdpa and ours


def test_suite_bench_from_json_rejects_other_files(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"rows": []}')
    assert main(["bench", "--from-json", str(bad), "--no-log"]) != 0
    assert "not a table written by `python -m suite.bench.cuda --out PATH`" in (
        capsys.readouterr().err)


def test_suite_bench_train_logs_throughput_and_reads_its_json_back(tmp_path, monkeypatch,
                                                                  capsys):
    """`suite bench --train` times whole training steps per (task, attention), softmax always
    among them as the baseline; the table is logged to its own experiment, and its JSON
    (`--out`, for GPU machines without a store) logs through `--from-json`."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    table = tmp_path / "train.json"
    args = ["bench", "--train", "--task", "flip_flop", "--attention", "entmax", "--profile",
            "smoke", "--train-steps", "3", "--warmup", "1", "--tracking-uri", uri]
    assert main([*args, "--out", str(table)]) == 0
    out = capsys.readouterr().out
    assert "training throughput" in out and "logged: bench_train run" in out
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("flip_flop")]
    assert [ln[1] for ln in lines] == ["softmax", "entmax"]
    assert lines[1][2] in ("numba", "torch")  # the backend that ran entmax's training calls
    assert lines[0][8] == "1.00"  # softmax against itself; entmax's ratio is a number
    float(lines[1][8])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench_train")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["suite.kind"] == "bench_train"
    assert {"median_ms.train.flip_flop.softmax.train_step",
            "median_ms.train.flip_flop.entmax.train_step"} <= set(run.data.metrics)
    assert main(["bench", "--from-json", str(table), "--tracking-uri", uri]) == 0
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_suite_bench_train_times_a_named_backend_beside_the_baseline(tmp_path, monkeypatch,
                                                                     capsys):
    """`--backend NAME` times the attentions on that backend; the softmax baseline stays on
    auto, a row of its own, so that both paths of softmax are timed in one run. Each row names
    the backend that ran; a backend that cannot run here is refused before anything is timed."""
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--train", "--task", "flip_flop", "--profile", "smoke", "--train-steps",
            "2", "--warmup", "1", "--no-log", "--out", str(tmp_path / "t.json")]
    assert main([*args, "--attention", "softmax", "--attention", "entmax",
                 "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("flip_flop")]
    assert [(ln[1], ln[2]) for ln in lines][1:] == [("softmax@torch", "torch"),
                                                   ("entmax@torch", "torch")]
    assert lines[0][1] == "softmax" and lines[0][8] == "1.00"
    import json

    written = json.loads((tmp_path / "t.json").read_text())
    rows = written["rows"]
    assert [r["requested_backend"] for r in rows] == ["auto", "torch", "torch"]
    from results.gitinfo import git_state

    # the table says which code it timed
    assert written["env"]["git_commit"] == git_state()["git_commit"] != ""
    assert rows[1]["ratio_to_softmax"] == rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    assert main([*args, "--attention", "entmax", "--backend", "triton"]) == 2
    err = capsys.readouterr().err
    assert "--backend triton" in err and "not usable on this machine" in err
    assert "training throughput" not in capsys.readouterr().out
