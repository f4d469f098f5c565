"""The leaderboard: golden tables on records built by hand, the round trip through `suite run`
and `suite leaderboard` into a temporary store, and bad stores (corrupt, unreachable)."""

import csv
import io
import json

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from results import leaderboard as lb
from results import speed as sp
from results.report import latest
from results.tracking import Tracker, TrackingError
from results.ui import free_port
from suite.cli import main

from .conftest import runs

DAY = 1_790_000_000_000  # 2026-09-21, ms


def rec(run, start, task, att, seed, length, train, metric, value, profile="quick", **config):
    key = lb.config_key({"attention": att, "task": task, "profile": profile, "seed": seed,
                         **config})
    return (run, start, task, att, seed, profile, "cpu: x86_64", "abc1234", key, length, train,
            metric, value)


def fixed_records() -> pl.DataFrame:
    rows = []
    ff = {("softmax", 0): (100, 50, 100, 75), ("softmax", 1): (100, 30, 100, 65),
          ("entmax", 0): (100, 80, 100, 90), ("entmax", 1): (90, 60, 95, 80)}
    for (att, seed), (em64, em256, ta64, ta256) in ff.items():
        run = f"{att}{seed}"
        rows += [rec(run, DAY + 10, "flip_flop", att, seed, 64, 64, "exact_match", em64),
                 rec(run, DAY + 10, "flip_flop", att, seed, 256, 64, "exact_match", em256),
                 rec(run, DAY + 10, "flip_flop", att, seed, 64, 64, "token_acc", ta64),
                 rec(run, DAY + 10, "flip_flop", att, seed, 256, 64, "token_acc", ta256)]
    # an older rerun of a seed and another profile: neither may count
    rows.append(rec("old", DAY, "flip_flop", "softmax", 0, 256, 64, "exact_match", 0.0))
    rows.append(rec("smk", DAY - 5, "flip_flop", "softmax", 2, 256, 64, "exact_match", 0.0,
                    profile="smoke"))
    for att, ppl in (("softmax", (3.5, 9.25)), ("entmax", (3.25, 4.0))):
        rows += [rec(f"lm-{att}", DAY + 20, "lm", att, 0, n, 128, "perplexity", p)
                 for n, p in zip((128, 512), ppl)]
    rows += [rec("niah", DAY + 30, "niah", "asentmax", 0, 512, 128, "retrieval_acc", 40.0),
             rec("niah", DAY + 30, "niah", "asentmax", 0, 512, 128, "token_acc", 70.0)]
    return pl.DataFrame(rows, schema=lb.SCHEMA, orient="row")


GOLDEN_CSV = """\
task,attention,length,multiple,exact_match_mean,exact_match_std,token_acc_mean,token_acc_std,\
seeds,nonfinite_seeds,perplexity_mean,perplexity_std,retrieval_acc_mean,retrieval_acc_std
flip_flop,entmax,64,1.0,95.0,7.0710678118654755,97.5,3.5355339059327378,2,0,,,,
flip_flop,entmax,256,4.0,70.0,14.142135623730951,85.0,7.0710678118654755,2,0,,,,
flip_flop,softmax,64,1.0,100.0,0.0,100.0,0.0,2,0,,,,
flip_flop,softmax,256,4.0,40.0,14.142135623730951,70.0,7.0710678118654755,2,0,,,,
lm,entmax,128,1.0,,,,,1,0,3.25,,,
lm,entmax,512,4.0,,,,,1,0,4.0,,,
lm,softmax,128,1.0,,,,,1,0,3.5,,,
lm,softmax,512,4.0,,,,,1,0,9.25,,,
niah,asentmax,512,4.0,,,70.0,,1,0,,,40.0,
"""

GOLDEN_MD = """\
# Attention leaderboard

about

## flip_flop

exact match % [token accuracy %], teacher forced; mean±std over seeds; training length 64; \
rank: score = mean exact match at 256 (beyond training); ties: mean token accuracy there; \
**bold**: best per column (none where all are 0)

| attention | score | 64 (1x) | 256 (4x) |
|---|---:|---:|---:|
| entmax | **70.0** | 95.0±7.1 [97.5] | **70.0**±14.1 [85.0] |
| softmax | 40.0 | **100.0**±0.0 [100.0] | 40.0±14.1 [70.0] |

## lm

perplexity per byte (lower is better); mean±std over seeds; training length 128; rank: score \
= mean perplexity per byte at 512 (beyond training), lowest first; **bold**: best per column \
(none where all are 0)

| attention | score | 128 (1x) | 512 (4x) |
|---|---:|---:|---:|
| entmax | **4.00** | **3.25** | **4.00** |
| softmax | 9.25 | 3.50 | 9.25 |

## niah

retrieval accuracy % [token accuracy %]; mean±std over seeds; training length 128; rank: \
score = mean retrieval accuracy at 512 (beyond training); ties: mean token accuracy there; \
**bold**: best per column (none where all are 0)

| attention | score | 512 (4x) |
|---|---:|---:|
| asentmax | **40.0** | **40.0** [70.0] |
"""

# ranked by the score (entmax first although softmax sorts first by name), the mark on the
# value itself, before the spread and the [token accuracy]
GOLDEN_TERMINAL = """\
flip_flop: exact match % [token accuracy %], teacher forced; mean±std over seeds; training \
length 64
rank: score = mean exact match at 256 (beyond training); ties: mean token accuracy there; * \
best per column (none where all are 0)
attention  score             64 (1x)           256 (4x)
entmax     70.0*    95.0 ±7.1 [97.5]  70.0*±14.1 [85.0]
softmax    40.0   100.0*±0.0 [100.0]  40.0 ±14.1 [70.0]"""


def golden_table() -> pl.DataFrame:
    recs, profile = lb.select(fixed_records())
    assert profile == "quick"  # the newest run's profile
    return lb.table(recs)


def test_golden_csv():
    assert lb.csv_text(golden_table()) == GOLDEN_CSV


def test_golden_markdown():
    assert lb.markdown(golden_table(), about="about") == GOLDEN_MD


def test_golden_terminal():
    text = lb.render(golden_table().filter(pl.col("task") == "flip_flop"))
    assert text == GOLDEN_TERMINAL


def ranked_part(values: dict[str, tuple]) -> pl.DataFrame:
    """One task's table from {attention: ((em 64, tok 64), (em 128, tok 128))}, one seed."""
    rows = []
    for i, (att, ladder) in enumerate(values.items()):
        for (em, tok), length in zip(ladder, (64, 128)):
            rows += [rec(f"r{i}", 1, "copy", att, 0, length, 64, "exact_match", em),
                     rec(f"r{i}", 1, "copy", att, 0, length, 64, "token_acc", tok)]
    return lb.table(pl.DataFrame(rows, schema=lb.SCHEMA, orient="row"))


def test_rows_are_ranked_by_the_score_beyond_training_then_token_accuracy():
    # by name: asentmax, entmax, softmax, sparsemax; by score at 128 (2x): sparsemax 60,
    # then entmax and softmax tied at 10 (token accuracy 50 beats 40), asentmax last
    part = ranked_part({"asentmax": ((100, 100), (0, 90)), "entmax": ((90, 95), (10, 50)),
                        "softmax": ((100, 100), (10, 40)), "sparsemax": ((50, 70), (60, 80))})
    assert [a for a, _, _ in lb.ranking(part)] == ["sparsemax", "entmax", "softmax", "asentmax"]
    text = lb.render(part)
    order = [line.split()[0] for line in text.splitlines()[3:]]
    assert order == ["sparsemax", "entmax", "softmax", "asentmax"]
    assert "rank: score = mean exact match at 128 (beyond training)" in text
    sparse = text.splitlines()[3]
    assert sparse.split()[1] == "60.0*"  # the best score, marked on the score
    assert "50.0  [70.0]" in sparse and "60.0* [80.0]" in sparse  # marks sit on the value


def test_nothing_is_marked_in_a_column_where_every_value_is_0():
    part = ranked_part({"entmax": ((0, 10), (0, 5)), "softmax": ((0, 20), (0, 7))})
    text = lb.render(part)
    assert "*" not in text.split("\n", 2)[2]  # neither the score nor any length
    assert [a for a, _, _ in lb.ranking(part)] == ["softmax", "entmax"]  # token acc decides
    assert "**" not in lb.markdown(part).split("| attention")[1]


def test_about_states_provenance():
    recs, profile = lb.select(fixed_records())
    assert lb.about(recs, profile) == (
        "Profile `quick`: 7 cell runs, 1-2 seed(s) per cell; device cpu: x86_64; commit "
        "abc1234; runs of 2026-09-21. Made by `suite leaderboard`.")


def test_html_marks_the_best_and_inlines_the_plot():
    page = lb.html(golden_table(), png_b64="AAAA")
    assert "<b>100.0</b>±0.0 [100.0]" in page and "<b>70.0</b>±14.1 [85.0]" in page
    assert "src='data:image/png;base64,AAAA'" in page and page.count("<table>") == 3


BENCH_ROWS = [{"impl": i, "T": t, "pass": p, "median_ms": ms, "device": "cpu"}
              for i, t, p, ms in [("sdpa_softmax", 1024, "fwd", 2.0),
                                  ("numba_entmax15", 1024, "fwd", 5.0),
                                  ("sdpa_softmax", 4096, "fwd", 20.0),
                                  ("numba_entmax15", 4096, "fwd", 30.0),
                                  ("numba_entmax15", 4096, "fwd+bwd", 99.0)]]


def test_golden_speed_table():
    speed = sp.ratios(pl.DataFrame(BENCH_ROWS).select(list(sp.SCHEMA)))
    md = lb.markdown(lb.table(pl.DataFrame(schema=lb.SCHEMA)), speed)
    assert md == """\
# Attention leaderboard

## Speed, fwd, cpu: median ms (ratio to sdpa_softmax)

| implementation | T=1024 | T=4096 |
|---|---:|---:|
| sdpa_softmax | 2.0 (1.00x) | 20.0 (1.00x) |
| numba_entmax15 | 5.0 (2.50x) | 30.0 (1.50x) |

## Speed, fwd+bwd, cpu: median ms (ratio to sdpa_softmax)

| implementation | T=4096 |
|---|---:|
| numba_entmax15 | 99.0 |
"""


# ----------------------------------------------------------------------------- with a store

def fill(uri: str) -> None:
    """Two finished cell runs, logged as `suite run` logs them (no training)."""
    tracker = Tracker(uri)
    for att, em in (("softmax", {64: 75.0, 128: 50.0}), ("entmax", {64: 50.0, 128: 62.5})):
        tags = {"suite.kind": "cell", "suite.task": "flip_flop", "suite.attention": att,
                "suite.seed": "0", "suite.profile": "smoke", "suite.train_length": "64",
                "suite.device": "cpu", "suite.config_hash": att}
        with tracker.run("flip_flop", f"{att} | flip_flop | seed 0", {"seed": 0}, tags) as log:
            for n, v in em.items():
                values = {"exact_match": v, "token_acc": 50 + v / 2}
                log.metrics({**values, **{f"{k}_L{n}": x for k, x in values.items()}}, step=n)


SWEEP = ["run", "--profile", "smoke", "--attention", "softmax", "--attention", "ssmax",
         "--seeds", "2", "--no-progress"]


def test_round_trip_sweep_then_leaderboard(store, tmp_path, capsys):
    assert main([*SWEEP, "--tracking-uri", store]) == 0
    sp.log_bench(BENCH_ROWS, store)
    capsys.readouterr()
    assert main(["leaderboard", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "flip_flop: exact match" in out and "Speed, fwd, cpu" in out
    logged = logged_metrics(store)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results/leaderboard.csv").read_text())))
    assert list(rows[0]) == lb.COLUMNS and len(rows) == 4  # 2 attentions x 2 lengths
    for row in rows:
        seeds = [logged[(row["attention"], s)] for s in (0, 1)]
        for metric in ("exact_match", "token_acc"):
            values = [m[f"{metric}_L{row['length']}"] for m in seeds]
            assert float(row[f"{metric}_mean"]) == pytest.approx(sum(values) / 2, abs=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(
                abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-12)
        assert row["seeds"] == "2" and float(row["multiple"]) == int(row["length"]) / 64
    check_leaderboard_run(store, tmp_path)
    check_readme_section(store, tmp_path, capsys)


def check_readme_section(store, tmp_path, capsys):
    """`suite leaderboard --write-readme` puts the store's numbers, commit and machine between
    the README's markers and leaves the rest of the file as it was."""
    from results import readme
    from results.gitinfo import git_state

    path = tmp_path / "README.md"
    path.write_text(f"# title\n\nbefore\n{readme.BEGIN}\nold table\n{readme.END}\nafter\n")
    capsys.readouterr()
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--format", "markdown",
                 "--write-readme", str(path)]) == 0
    printed = capsys.readouterr().out
    text = path.read_text()
    head, section = text.split(readme.BEGIN)
    section, tail = section.split(readme.END)
    assert head == "# title\n\nbefore\n" and tail == "\nafter\n"
    assert "old table" not in section and section.strip() in printed
    assert git_state()["git_commit"][:7] in section and "seeds 0, 1" in section
    run = runs(store)[0]
    assert run.data.tags["suite.device"] in section
    assert f"MKL_CBWR={run.data.tags['suite.mkl_cbwr']}" in section
    tab = lb.table(lb.select(lb.records(Tracker(store)))[0])
    for row in tab.iter_rows(named=True):  # every mean and std of the table, as printed
        cell = f"{row['exact_match_mean']:.1f}"
        assert f"| {row['attention']} |" in section
        assert cell in section and f"± {row['exact_match_std']:.1f}" in section
    assert "Ranked by the mean at 128 (2x the training length): " in section
    path.write_text("no markers\n")
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--write-readme",
                 str(path)]) == 2
    assert "has no section to write into" in capsys.readouterr().err
    assert path.read_text() == "no markers\n"


def test_readme_table_and_ranking():
    from results import readme

    tab = lb.table(lb.select(fixed_records(), "quick")[0])
    part = tab.filter(pl.col("task") == "flip_flop")
    assert readme._table(part) == [
        "exact match % [token accuracy %], teacher forced: mean ± std over 2 seeds; **bold**: "
        "best mean per column", "",
        "| attention | 64 (1x) | 256 (4x) |", "|---|---:|---:|",
        "| entmax | 95.0 ± 7.1 [97.5] | **70.0** ± 14.1 [85.0] |",
        "| softmax | **100.0** ± 0.0 [100.0] | 40.0 ± 14.1 [70.0] |"]
    assert readme._ranking(part) == ("Ranked by the mean at 256 (4x the training length): "
                                     "entmax 70.0 ± 14.1, softmax 40.0 ± 14.1.")


def logged_metrics(uri) -> dict:
    return {(r.data.tags["suite.attention"], int(r.data.tags["suite.seed"])): r.data.metrics
            for r in runs(uri)}


def check_leaderboard_run(uri, tmp_path):
    exp_id, run_id = latest(Tracker(uri))
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["suite.kind"] == "leaderboard"
    assert "## flip_flop" in run.data.tags["mlflow.note.content"]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"leaderboard.csv", "leaderboard.md", "leaderboard.html", "leaderboard.png",
            "leaderboard.txt", "leaderboard_table.json", "speed_table.json"} <= names
    got = client.download_artifacts(run_id, "leaderboard.csv", str(tmp_path / "dl"))
    assert open(got).read() == (tmp_path / "results/leaderboard.csv").read_text()
    table = json.loads(open(client.download_artifacts(
        run_id, "leaderboard_table.json", str(tmp_path / "dl"))).read())
    assert table["columns"] == lb.COLUMNS and len(table["data"]) == 4
    assert (tmp_path / "results/leaderboard.png").read_bytes()[:4] == b"\x89PNG"


def test_failed_run_is_failed_and_interrupted_run_is_killed(store):
    tracker = Tracker(store)
    for err, status in ((ValueError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")):
        with pytest.raises(type(err)), tracker.run("x", "r", {"a": 1}, {"k": "v"}):
            raise err
        run = tracker.client.search_runs([tracker.experiment("x")], max_results=1)[0]
        assert run.info.status == status
        assert run.data.tags["suite.error"].startswith(type(err).__name__)


def test_corrupt_store_names_the_uri_and_touches_nothing(store, tmp_path, capsys):
    db = tmp_path / "garbage.db"
    db.write_bytes(b"not a database, but somebody's file\n" * 100)
    uri, before = f"sqlite:///{db}", db.read_bytes()
    (tmp_path / "results").mkdir()
    (tmp_path / "results/leaderboard.md").write_text("earlier leaderboard")
    for argv in (["leaderboard"], ["run", "--profile", "smoke", "--attention", "softmax"],
                 ["ui", "--port", str(free_port())]):
        assert main([*argv, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert f"cannot open the MLflow tracking store at {uri!r}" in err
        assert "file is not a database" in err
    assert db.read_bytes() == before
    assert (tmp_path / "results/leaderboard.md").read_text() == "earlier leaderboard"


def test_unreachable_server_names_the_uri_at_once_and_loses_nothing(store, tmp_path, capsys):
    fill(store)
    assert main(["leaderboard", "--tracking-uri", store]) == 0
    files = lambda: {p.name: p.read_bytes()  # noqa: E731
                     for p in (tmp_path / "results").glob("leaderboard.*")}
    written = files()
    assert len(written) == 4
    dead = f"http://127.0.0.1:{free_port()}"
    capsys.readouterr()
    for argv in (["leaderboard"], ["run", "--profile", "smoke", "--attention", "softmax"]):
        assert main([*argv, "--tracking-uri", dead]) == 2
        err = capsys.readouterr().err
        assert f"cannot reach the MLflow tracking store at {dead!r}" in err
        # the one probe answered, not MLflow's client after its minutes of retries
        assert "ConnectionError: no answer within 5s" in err
    assert files() == written
    assert len(logged_metrics(store)) == 2  # the store is as it was
    with pytest.raises(TrackingError, match="benchmark rows are kept in") as err:
        sp.log_bench(BENCH_ROWS, dead)
    kept = str(err.value).split("kept in ", 1)[1].split(": log them", 1)[0]
    assert json.loads(open(kept).read())["rows"] == BENCH_ROWS
    assert repr(dead) in str(err.value)
    assert sp.kept_rows(json.loads(open(kept).read())) == BENCH_ROWS  # --from-json reads it
    assert f"suite bench --from-json {kept}" in str(err.value)


def test_failed_leaderboard_logging_keeps_the_files_and_fails_the_run(store, tmp_path, capsys):
    fill(store)
    client = MlflowClient(store)
    client.create_experiment("leaderboard", artifact_location="file:///proc/no-artifacts-here")
    assert main(["leaderboard", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert repr(store) in err and "only the leaderboard run is missing" in err
    assert (tmp_path / "results/leaderboard.csv").read_text().count("flip_flop") == 4
    exp = client.get_experiment_by_name("leaderboard")
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["FAILED"]


ROUNDS = ("flip_flop", "sort", "copy", "reverse", "mqmtar", "niah")


def _race_on_a_new_store(uri: str, barrier, queue) -> None:
    """One process of the race below: new experiments, each at the barrier; then its own run
    and the dataset, at the barrier again."""
    from results.tracking import RunLog, Tracker

    tracker = Tracker(uri)
    tracker.client.search_experiments()  # connected
    try:
        for task in ROUNDS:  # a few rounds: each a race of its own
            barrier.wait()
            tracker.experiment(task, description=f"the cells of {task}")
        exp = tracker.experiment(ROUNDS[0])
        run_id = tracker.client.create_run(exp).info.run_id
        barrier.wait()
        RunLog(tracker.client, run_id).dataset("flip_flop", "d1g3st", "tasks.flip_flop",
                                               {"version": 1})
        queue.put(("ok", run_id))
    except Exception as err:  # reported to the parent; the others stop waiting
        barrier.abort()
        queue.put((f"{type(err).__name__}: {err}"[:300], None))


def test_processes_making_one_experiment_and_dataset_at_once_all_succeed(tmp_path):
    """Processes that tag one new experiment, then log the same dataset input to their runs, at
    the same moment (the cells of a Ray sweep, several sweeps on one store). MLflow's SQL store
    writes both by looking the row up and inserting it when missing, so all but one process
    lost the race on the table's unique key and failed with an IntegrityError (with 8
    processes: the dataset 4 times in 4, the experiment's tag 2 times in 3). Now every process
    succeeds, and the dataset is stored once."""
    import multiprocessing

    uri = f"sqlite:///{tmp_path}/m.db"
    Tracker(uri).experiment("warm")
    n = 8
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race_on_a_new_store, args=(uri, barrier, queue))
             for _ in range(n)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(30)
    assert [status for status, _ in got] == ["ok"] * n, got
    client = MlflowClient(uri)
    for task in ROUNDS:
        exp = client.get_experiment_by_name(task)
        assert exp.tags["mlflow.note.content"] == f"the cells of {task}"
    digests = set()
    for _, run_id in got:
        (ds,) = client.get_run(run_id).inputs.dataset_inputs
        digests.add((ds.dataset.name, ds.dataset.digest))
    assert digests == {("flip_flop", "d1g3st")}
