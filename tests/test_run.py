"""`suite run` end to end on the smoke profile, into a temporary embedded store."""

import textwrap
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from results.leaderboard import build
from suite import profiles
from suite.cli import main
from suite.train import Cell, train

from .conftest import runs


def test_smoke_sweep_round_trip(store, capsys):
    argv = ["run", "--profile", "smoke", "--attention", "softmax",
            "--attention", "entmax:alpha=1.5", "--tracking-uri", store, "--no-progress"]
    assert main(argv) == 0
    got = runs(store)
    assert len(got) == 2 and {r.info.status for r in got} == {"FINISHED"}
    by_att = {r.data.tags["suite.attention"]: r for r in got}
    assert set(by_att) == {"softmax", "entmax"}  # canonical labels
    for r in got:
        tags = r.data.tags
        for tag in ("suite.config_hash", "suite.git_commit", "suite.git_dirty", "suite.device",
                    "version.torch", "suite.task_version", "suite.backend"):
            assert tags.get(tag), tag
        assert r.data.params["model.n_layers"] == "1"
        history = MlflowClient(store).get_metric_history(r.info.run_id, "exact_match")
        assert sorted(m.step for m in history) == [64, 128]  # the length as the step
    tab, text = build(store)
    assert tab.height == 4 and set(tab["seeds"].to_list()) == {1}
    for row in tab.iter_rows(named=True):
        metrics = by_att[row["attention"]].data.metrics
        assert row["exact_match_mean"] == metrics[f"exact_match_L{row['length']}"]
        assert row["token_acc_mean"] == metrics[f"token_acc_L{row['length']}"]
        assert row["multiple"] == row["length"] / 64
    assert "flip_flop" in text and "128 (2x)" in text
    capsys.readouterr()
    assert main(argv) == 0  # the same command again: every cell skipped
    out = capsys.readouterr().out
    assert out.count("skipped, finished already") == 2
    assert len(runs(store)) == 2


def test_the_store_reads_well_in_the_ui(store, tmp_path, capsys):
    """What the MLflow UI shows: experiments of the model-training kind with a description,
    short run names, a source, the task as a dataset input, summary metrics (score and one
    per multiple of the training length), the per-length table; one current leaderboard run
    with a metric per (task, attention), older ones kept and marked."""
    import json
    import re
    import stat

    from results.report import metric_name
    from results.tracking import KIND_TAG, MODEL_TRAINING, NOTE_TAG

    argv = ["run", "--profile", "smoke", "--attention", "softmax", "--attention",
            "entmax:alpha=1.25", "--tracking-uri", store, "--no-progress"]
    assert main(argv) == 0
    assert main(["leaderboard", "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("flip_flop")
    assert exp.tags[KIND_TAG] == MODEL_TRAINING
    assert "evaluation length" in exp.tags[NOTE_TAG] and "training step" in exp.tags[NOTE_TAG]
    cells = {r.info.run_name: r for r in runs(store)}
    assert set(cells) == {"softmax s0", "entmax:alpha=1.25 s0"}
    for run in cells.values():
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["mlflow.source.name"] == "suite run"
        assert re.fullmatch(r"cpu: .+ \(\d+ threads\)", tags["suite.device"])
        assert tags["suite.device"] != "cpu: cpu"
        ems = [metrics[f"exact_match_L{n}"] for n in (64, 128)]
        assert metrics["exact_match_1x"] == ems[0] and metrics["exact_match_2x"] == ems[1]
        assert metrics["score"] == ems[1]  # beyond the training length: 128 only
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "flip_flop" and "flip_flop" in ds.dataset.source
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval_table.json",
                                                          str(tmp_path))).read_text())
        assert table["columns"][:3] == ["length", "multiple", "exact_match"]
        assert [row[:2] for row in table["data"]] == [[64, 1.0], [128, 2.0]]
    board = client.get_experiment_by_name("leaderboard")
    assert board.tags[KIND_TAG] == MODEL_TRAINING and "superseded" in board.tags[NOTE_TAG]
    boards = client.search_runs([board.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(boards) == 2  # one by `suite run`, one by `suite leaderboard`
    old, new = boards
    assert new.data.tags["suite.current"] == "true" and new.info.run_name == "leaderboard | smoke"
    assert old.data.tags["suite.current"] == "false"
    assert old.info.run_name == "superseded | leaderboard | smoke"
    assert old.data.tags["suite.superseded_by"] == new.info.run_id
    for att, run in (("softmax", cells["softmax s0"]),
                     ("entmax:alpha=1.25", cells["entmax:alpha=1.25 s0"])):
        assert new.data.metrics[metric_name("flip_flop", att)] == run.data.metrics["score"]
    assert metric_name("flip_flop", "entmax:alpha=1.25") == "score/flip_flop/entmax_alpha_1.25"
    for path in Path("results").glob("leaderboard.*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path  # readable, as the db
    page = Path("results/leaderboard.html").read_text()
    assert "`" not in page and "<code>smoke</code>" in page


NAN_PLUGIN = textwrap.dedent('''
    import torch
    import attentions

    @attentions.register("nan_attention_test")
    def nan_attention(q, k, v, *, causal, bias):
        """returns NaN (a broken attention, for the failure test)."""
        return v * float("nan")
''')


def test_failed_cell_is_marked_failed_and_the_sweep_goes_on(store, tmp_path, capsys):
    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    code = main(["run", "--profile", "smoke", "--attention", "nan_attention_test",
                 "--attention", "softmax", "--plugin", str(plugin), "--tracking-uri", store,
                 "--no-progress"])
    assert code == 1
    status = {r.data.tags["suite.attention"]: r for r in runs(store)}
    assert status["nan_attention_test"].info.status == "FAILED"
    assert "loss is nan at step 0" in status["nan_attention_test"].data.tags["suite.error"]
    assert status["softmax"].info.status == "FINISHED"
    assert "FAILED: NonFiniteLoss" in capsys.readouterr().out


LONG_NAN_PLUGIN = textwrap.dedent('''
    import torch
    import attentions

    @attentions.register("nan_when_long_test")
    def nan_when_long(q, k, v, *, causal, bias):
        """softmax up to 100 keys, NaN beyond: finite at training lengths (flip_flop's rows
        of at most 66 tokens), broken at the evaluation length 128."""
        z = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, T, T)
        if bias is not None:
            z = z + bias
        if causal:
            z = z.masked_fill(torch.ones_like(z, dtype=torch.bool).triu(1), float("-inf"))
        out = z.softmax(-1) @ v
        return out * float("nan") if k.shape[2] > 100 else out
''')


def test_non_finite_outputs_at_a_long_length_are_reported_not_ranked(store, tmp_path, capsys):
    """An attention finite where it trains and NaN at a longer evaluation length: the cell
    finishes (nothing was wrong in training), and the console line, the run (per-length metric
    and tag), the leaderboard table and its ranking all say so at that length."""
    from results.leaderboard import markdown

    plugin = tmp_path / "long_nan_plugin.py"
    plugin.write_text(LONG_NAN_PLUGIN)
    assert main(["run", "--profile", "smoke", "--attention", "nan_when_long_test",
                 "--attention", "softmax", "--plugin", str(plugin), "--tracking-uri", store,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "nan_when_long_test" in ln and "done in" in ln)
    assert "128:non-finite(100% of sequences)" in line
    assert "NON-FINITE outputs (NaN or inf) at length 128" in line
    by = {r.data.tags["suite.attention"]: r for r in runs(store)}
    broken, fine = by["nan_when_long_test"], by["softmax"]
    assert broken.info.status == "FINISHED"
    assert broken.data.tags["suite.nonfinite"] == "128"
    assert broken.data.metrics["nonfinite_L128"] == 100.0
    assert broken.data.metrics["nonfinite_L64"] == 0.0
    assert broken.data.metrics["exact_match_L128"] == 0.0
    assert "suite.nonfinite" not in fine.data.tags and fine.data.metrics["nonfinite_L128"] == 0
    tab, text = build(store)
    seeds = {(r["attention"], r["length"]): r["nonfinite_seeds"]
             for r in tab.iter_rows(named=True)}
    assert seeds == {("nan_when_long_test", 64): 0, ("nan_when_long_test", 128): 1,
                     ("softmax", 64): 0, ("softmax", 128): 0}
    rows = [ln for ln in text.splitlines() if ln.startswith(("nan_when_long_test", "softmax"))]
    assert rows[0].startswith("softmax")  # the broken row goes below, whatever its numbers
    assert "non-finite (1/1 seeds)" in rows[1] and rows[1].split()[1] == "non-finite"
    assert "non-finite (1/1 seeds)" in markdown(tab)


@pytest.mark.parametrize("argv,match", [
    (["--attention", "entmx"], "unknown attention 'entmx'. Did you mean 'entmax'"),
    (["--attention", "entmax:alpha=1"], r"alpha=1.0 is outside \(1, 2\]"),
    (["--task", "flipflop"], "unknown task 'flipflop'. Did you mean 'flip_flop'"),
    (["--seeds", "0"], "--seeds 0: give at least 1"),
    (["--steps", "0"], "--steps 0: must be positive"),
])
def test_bad_input_fails_at_once(store, capsys, argv, match):
    assert main(["run", "--profile", "smoke", "--tracking-uri", store, *argv]) == 2
    assert __import__("re").search(match, capsys.readouterr().err)
    assert not runs(store)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_fails_at_once(store, capsys):
    assert main(["run", "--profile", "smoke", "--device", "cuda", "--tracking-uri", store]) == 2
    assert "no CUDA device is visible here" in capsys.readouterr().err


def test_unreachable_tracking_server(store, capsys):
    code = main(["run", "--profile", "smoke", "--attention", "softmax",
                 "--tracking-uri", "http://127.0.0.1:9", "--no-progress"])
    assert code == 2
    assert "cannot reach the MLflow tracking store at 'http://127.0.0.1:9'" in \
        capsys.readouterr().err


def _cell(attention="entmax"):
    return Cell(attention, "flip_flop", 0, profiles.get("smoke"), "cpu")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_bit_for_bit_deterministic_on_cpu(store):
    a, _ = train(_cell(), progress=False)
    first = _state(a)
    import shutil
    shutil.rmtree("results/checkpoints")
    b, _ = train(_cell(), progress=False)
    for key, value in _state(b).items():
        assert torch.equal(value, first[key]), key


class _Interrupt(Exception):
    pass


class _StopAt:
    """A run log that interrupts training at a given step (like a kill after a checkpoint)."""

    def __init__(self, step):
        self.step = step

    def metrics(self, values, step, timestamp=None):
        if step >= self.step and "train_loss" in values:
            raise _Interrupt(step)


def test_interrupted_cell_resumes_from_its_checkpoint(store):
    import shutil

    reference, _ = train(_cell("asentmax"), progress=False)
    want = _state(reference)
    shutil.rmtree("results/checkpoints")
    with pytest.raises(_Interrupt):
        train(_cell("asentmax"), log=_StopAt(10), progress=False)  # checkpoint at step 6
    model, summary = train(_cell("asentmax"), progress=False)
    assert summary["resumed_from"] == 6
    for key, value in _state(model).items():
        assert torch.equal(value, want[key]), key


def test_offline_log_then_import(store, tmp_path, capsys):
    """A machine without MLflow writes a JSON-lines log; `suite import` loads it; the import
    is idempotent, and a sweep against the store then skips those cells."""
    log = tmp_path / "gpu" / "runs.jsonl"
    code = (  # as on a GPU node: neither MLflow nor polars can be imported
        "import sys; sys.modules['mlflow'] = sys.modules['polars'] = None; "
        "from suite.cli import main; "
        f"rc = main(['run', '--profile', 'smoke', '--attention', 'softmax', "
        f"'--tracking-uri', 'jsonl:{log}', '--no-progress']); sys.exit(rc)"
    )
    stated = {"SUITE_GIT_COMMIT": "5d7a1b7e0c+dirty"}  # a GPU node's copied tree, stale .git
    out = __import__("subprocess").run([__import__("sys").executable, "-c", code],
                                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                       env={**__import__("os").environ, **stated})
    assert out.returncode == 0, out.stderr
    assert "suite import" in out.stdout
    assert main(["import", str(log), "--tracking-uri", store]) == 0
    assert main(["import", str(log), "--tracking-uri", store]) == 0
    assert "imported 0 run(s), skipped 1" in capsys.readouterr().out
    (run,) = runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["suite.attention"] == "softmax"
    assert "exact_match_L128" in run.data.metrics
    tags = run.data.tags
    assert (tags["suite.git_commit"], tags["suite.git_dirty"], tags["suite.git_source"]) == (
        "5d7a1b7e0c", "true", "stated")
    assert main(["run", "--profile", "smoke", "--attention", "softmax", "--tracking-uri", store,
                 "--no-progress"]) == 0
    assert "skipped, finished already" in capsys.readouterr().out


USER_PLUGIN = textwrap.dedent('''
    import attentions

    @attentions.register("my_relu_test")
    def my_relu(q, k, v, *, causal, bias, power: float = 1.0):
        """relu attention, a user's one-file plugin."""
        z = (q @ k.transpose(-1, -2)).relu() ** power
        return (z.tril() if causal else z) @ v / q.shape[2]
''')


def test_a_users_plugin_trains_and_appears_in_the_results(store, tmp_path, capsys):
    plugin = tmp_path / "my_attention.py"
    plugin.write_text(USER_PLUGIN)
    assert main(["run", "--profile", "smoke", "--attention", "my_relu_test:power=2",
                 "--plugin", str(plugin), "--tracking-uri", store, "--no-progress"]) == 0
    (run,) = runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.tags["suite.attention"] == "my_relu_test:power=2"
    assert "my_relu_test:power=2" in capsys.readouterr().out  # in the printed leaderboard
    tab, _ = build(store)
    assert set(tab["attention"].to_list()) == {"my_relu_test:power=2"}


def test_suite_show_prints_a_decoded_example(capsys):
    assert main(["show", "sort", "--length", "12"]) == 0
    out = capsys.readouterr().out
    assert "sort" in out and "source" in out and "target" in out


def test_default_variants_are_the_builtins_not_the_plugins(tmp_path):
    """`suite run` without --attention trains every variant the attentions package registers
    (found, not listed), and none that a plugin added."""
    import attentions
    from suite.run import plan

    plugin = tmp_path / "relu_plugin.py"
    plugin.write_text(USER_PLUGIN.replace("my_relu_test", "default_excluded_test"))
    attentions.load_plugin(str(plugin))
    try:
        cells = plan(None, None, "smoke", 1, "cpu")
    finally:
        attentions.REGISTRY.unregister("default_excluded_test")
    shipped = [n for n in attentions.names()
               if attentions.get(n).__module__.startswith("attentions.")]
    assert [c.attention for c in cells] == shipped and len(shipped) >= 6


def _logged(path) -> dict[str, dict[str, float]]:
    """The last value of every metric of every finished run in an offline log (timing metrics
    aside), by attention."""
    from results.offline import read

    timing = {"train_seconds", "tokens_per_s", "eval_seconds", "cpu_seconds"}
    names, values, done = {}, {}, set()
    for rec in read(path):
        if rec["event"] == "start":
            names[rec["run"]] = rec["tags"]["suite.attention"]
            values[rec["run"]] = {}
        elif rec["event"] == "metrics":
            values[rec["run"]].update({k: v for k, v in rec["values"].items() if k not in timing})
        elif rec["event"] == "end" and rec["status"] == "FINISHED":
            done.add(rec["run"])
    return {names[r]: values[r] for r in done}


def test_the_main_jobs_path_repeats_bit_for_bit(tmp_path, monkeypatch, capsys):
    """Two cells run twice, each time side by side in worker processes as the main job runs
    them (pinned CPU numerics, one torch thread each): training, the out-of-distribution
    checkpoint selection, and evaluation up to 512 tokens (the numba backend's short kernels
    and its block path) give the same metrics, digit for digit."""
    got = []
    for n in range(2):
        home = tmp_path / f"run{n}"
        home.mkdir()
        monkeypatch.chdir(home)
        log = home / "runs.jsonl"
        assert main(["run", "--profile", "smoke", "--attention", "entmax", "--attention",
                     "softmax", "--max-eval-length", "512", "--jobs", "2", "--tracking-uri",
                     f"jsonl:{log}", "--no-progress"]) == 0
        assert "2 worker processes, 1 torch thread(s) each" in capsys.readouterr().out
        got.append(_logged(log))
    first, second = got
    assert set(first) == {"entmax", "softmax"}
    for att, values in first.items():
        assert "exact_match_L512" in values and "best_step" in values
        assert values == second[att], att


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs CUDA"))])
@pytest.mark.parametrize("attention", ["softmax", "entmax", "asentmax"])
@pytest.mark.parametrize("task", ["sort", "mqmtar"])
def test_backend_tag_names_the_training_calls_backend(attention, task, device):
    """``suite.backend`` is the backend the model's attention resolves for a training batch
    (with its position bias and shape), not a resolution without them (on CUDA, softmax
    under NAPE runs FlexAttention, which the tag said was torch)."""
    from suite import profiles
    from suite.run import kernel_backend
    from suite.train import Cell, build_model

    cell = Cell(attention, task, 0, profiles.get("quick"), device, "auto")
    model = build_model(cell).to(device)
    import tasks as registry

    t = registry.get(task)
    _, budget = cell.size_budget
    batch = t.sample(t.rng(0, "train"), t.train_length, budget.batch_size)
    with torch.no_grad():
        model(batch.tokens.to(device))
    used = model.blocks[0].attn.attn.__dict__["_last_kernel"].NAME
    assert kernel_backend(cell, model) == used
