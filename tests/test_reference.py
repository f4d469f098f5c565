"""Reference rows: published offline logs ranked beside a user's own cells of the same task and
profile (`suite leaderboard --reference`), marked as references; and the logs the suite ships."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import polars as pl
import pytest

from results import leaderboard as lb
from results import reference as ref
from results.report import make
from suite.cli import main

from .test_plugin_bias import readme_plugin

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def published(store, tmp_path):
    """A small published log: softmax and entmax, smoke profile, 2 seeds, trained on CPU."""
    log = tmp_path / "published" / "cpu-smoke.jsonl"
    assert main(["run", "--profile", "smoke", "--attention", "softmax", "--attention", "entmax",
                 "--seeds", "2", "--tracking-uri", f"jsonl:{log}", "--no-progress"]) == 0
    return log


def test_own_variant_ranked_beside_reference_rows(store, published, tmp_path, capsys):
    plugin = tmp_path / "my_attention.py"
    # the README's plugin under a name of its own (another test of this process loads it)
    plugin.write_text(readme_plugin().replace('register("relu_attn")', 'register("mine")'))
    assert main(["run", "--profile", "smoke", "--plugin", str(plugin), "--attention",
                 "mine:power=2", "--tracking-uri", store, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--tracking-uri", store, "--no-log"]) == 0
    assert "reference" not in capsys.readouterr().out  # only when asked for
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--reference",
                 str(published.parent)]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results/leaderboard.csv").read_text())))
    labels = {r["attention"] for r in rows}
    refs = sorted(a for a in labels if "(reference: " in a)
    assert [a.split(" (")[0] for a in refs] == ["entmax", "softmax"]
    assert "mine:power=2" in labels and len(labels) == 3
    starts = [json.loads(line) for line in published.read_text().splitlines()
              if '"event": "start"' in line]
    device = starts[0]["tags"]["suite.device"]
    for label in refs:  # where it came from: the card (here the CPU), the day, the commit
        assert label.startswith(f"{label.split(' (')[0]} (reference: {device.split(': ', 1)[1]}, ")
        assert re.search(r", \d{4}-\d\d-\d\d\)$", label) and label in out
    # the reference numbers are the log's: the mean over its two seeds, per length
    logged = _final_metrics(published)
    for row in rows:
        if row["attention"] in refs:
            att = row["attention"].split(" (")[0]
            values = [logged[(att, s)][f"exact_match_L{row['length']}"] for s in (0, 1)]
            assert row["seeds"] == "2"
            assert float(row["exact_match_mean"]) == pytest.approx(sum(values) / 2, abs=1e-9)
    # one ranking holds all three rows
    rep = make(store, None, tmp_path / "again", log=False, reference=[str(published)])
    tab = lb.table(rep.records)
    order = [a for a, *_ in lb.ranking(tab.filter(pl.col("task") == "flip_flop"))]
    assert sorted(order) == sorted(labels)


def test_reference_of_another_profile_is_not_shown(store, published, capsys):
    assert main(["run", "--profile", "smoke", "--attention", "sparsemax", "--steps", "6",
                 "--tracking-uri", store, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--profile", "quick",
                 "--reference", str(published)]) == 0
    out = capsys.readouterr().out
    assert "(reference: " not in out


def test_reference_alone_and_bad_reference(store, published, tmp_path, capsys):
    """With nothing of one's own the reference rows are the leaderboard; a path that is not a
    log is refused in one line."""
    capsys.readouterr()
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--reference",
                 str(published)]) == 0
    assert "softmax (reference: " in capsys.readouterr().out
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--reference",
                 str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not a log\n")
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--reference",
                 str(bad)]) == 2
    assert "not an offline run log" in capsys.readouterr().err


def test_shipped_reference_logs():
    """What the suite ships: sort at the repro budget, 3 finished seeds of softmax, ssmax,
    entmax and asentmax, each with exact match at every length of the ladder; and the main
    job's runs on the CPU."""
    recs, runs = ref.load(ref.paths())
    sort = recs.filter((pl.col("profile") == "repro") & (pl.col("task") == "sort")
                       & (pl.col("metric") == "exact_match"))
    seeds = sort.group_by("attention").agg(pl.col("seed").unique().sort())
    assert dict(seeds.iter_rows()) == {a: [0, 1, 2]
                                       for a in ("softmax", "ssmax", "entmax", "asentmax")}
    lengths = sort.group_by("run_id").agg(pl.col("length").unique().sort())
    assert all(ls == [64, 128, 256, 512] for ls in lengths["length"].to_list())
    assert all("NVIDIA H200" in runs[i].data.tags["suite.device"] for i in sort["run_id"])
    # the main job (quick profile, flip_flop, on the 2-core CPU): the six built-ins x 3 seeds,
    # every length of its ladder, the numbers of the README's main-job section
    quick = recs.filter((pl.col("profile") == "quick") & (pl.col("task") == "flip_flop")
                        & (pl.col("metric") == "exact_match"))
    seeds = quick.group_by("attention").agg(pl.col("seed").unique().sort())
    assert dict(seeds.iter_rows()) == {a: [0, 1, 2] for a in (
        "softmax", "ssmax", "entmax", "sparsemax", "asentmax", "topk")}
    lengths = quick.group_by("run_id").agg(pl.col("length").unique().sort())
    assert all(ls == [64, 128, 256, 512, 1024] for ls in lengths["length"].to_list())
    assert all(runs[i].data.tags["suite.device"].startswith("cpu: ") for i in quick["run_id"])
    ssmax = quick.filter((pl.col("attention") == "ssmax") & (pl.col("length") == 512))
    assert sorted(ssmax["value"].to_list()) == [96.0, 98.0, 98.0]  # the README: 97.3 +- 1.2



def test_shipped_long_reference_logs():
    """The long MQMTAR campaign so far (results/published/LEDGER.md): seed 0 of softmax, entmax
    and the near-identity ASEntmax at 100,000 steps, FINISHED, each with the whole ladder to
    65,536 and no non-finite outputs, the numbers of docs/results.md's long section; and copy at
    the repro budget: 3 FINISHED seeds of each of the four attentions, over two sessions of one
    code.suite (the first session's KILLED cells are in the log and not read), with the numbers
    docs/results.md states."""
    recs, runs = ref.load(ref.paths())
    long = recs.filter((pl.col("profile") == "long") & (pl.col("task") == "mqmtar"))
    em = long.filter(pl.col("metric") == "exact_match")
    seeds = em.group_by("attention").agg(pl.col("seed").unique().sort())
    assert dict(seeds.iter_rows()) == {"softmax": [0], "entmax": [0],
                                       "asentmax:beta_bias=-2.9702,init_std=0": [0]}
    ladder = [64 << i for i in range(11)]  # 64 ... 65,536
    lengths = em.group_by("run_id").agg(pl.col("length").unique().sort())
    assert all(ls == ladder for ls in lengths["length"].to_list())
    at = {(r["attention"], r["length"]): r["value"] for r in em.iter_rows(named=True)}
    assert (at["entmax", 65536], at["softmax", 65536], at["softmax", 16384]) == (61.0, 0.0, 26.0)
    nonfinite = long.filter(pl.col("metric") == "nonfinite")
    assert nonfinite.height == 33 and nonfinite["value"].max() == 0.0
    assert all(runs[i].data.params["train.steps"] == "100000" for i in em["run_id"])
    copy = recs.filter((pl.col("profile") == "repro") & (pl.col("task") == "copy")
                       & (pl.col("metric") == "exact_match"))
    seeds = copy.group_by("attention").agg(pl.col("seed").unique().sort())
    assert dict(seeds.iter_rows()) == {a: [0, 1, 2] for a in ("softmax", "ssmax", "entmax",
                                                                "asentmax")}
    assert copy.group_by("attention", "seed").agg(pl.col("run_id").n_unique())["run_id"].max() == 1
    at64 = copy.filter(pl.col("length") == 4096).group_by("attention").agg(pl.col("value").mean())
    means = {a: round(v, 1) for a, v in at64.iter_rows()}
    assert means == {"asentmax": 47.2, "ssmax": 29.8, "softmax": 11.6, "entmax": 2.0}
    codes = {runs[i].data.params["code.suite"] for i in copy["run_id"]}
    assert codes == {"4542078c6da2"}


def test_shipped_token_classification_logs():
    """2-back (2026-12-05) and local count version 2 (2026-12-06) at the repro budget, one H100:
    3 FINISHED seeds of each of the four attentions, one run per seed, the numbers
    docs/results.md states; local count version 1's runs are no longer reference rows (the
    suite cannot train that version), and their log, kept under calibration/, still gives the
    numbers the page states for it."""
    recs, runs = ref.load(ref.paths())
    rep = recs.filter(pl.col("profile") == "repro")
    for task in ("two_back", "local_count"):
        em = rep.filter((pl.col("task") == task) & (pl.col("metric") == "exact_match"))
        seeds = em.group_by("attention").agg(pl.col("seed").unique().sort())
        assert dict(seeds.iter_rows()) == {a: [0, 1, 2] for a in ("softmax", "ssmax", "entmax",
                                                                    "asentmax")}, task
        assert em.group_by("attention", "seed").agg(pl.col("run_id").n_unique())[
            "run_id"].max() == 1
        assert all("H100" in runs[i].data.tags["suite.device"] for i in em["run_id"])
        assert rep.filter((pl.col("task") == task) & (pl.col("metric") == "nonfinite"))[
            "value"].max() == 0.0
    two = rep.filter((pl.col("task") == "two_back") & (pl.col("metric") == "exact_match"))
    assert two["value"].min() == 100.0  # every attention, seed and length to 64x
    count = rep.filter((pl.col("task") == "local_count") & (pl.col("metric") == "exact_match"))
    assert {runs[i].data.params["task_version"] for i in count["run_id"]} == {"2"}
    assert {runs[i].data.params["code.suite"] for i in count["run_id"]} == {"0f38134c7163"}
    at32 = count.filter(pl.col("length") == 4096).group_by("attention").agg(
        pl.col("value").mean().round(1), pl.col("value").std().round(1).alias("std"))
    assert {a: (m, sd) for a, m, sd in at32.iter_rows()} == {
        "ssmax": (75.4, 8.3), "softmax": (25.9, 44.8), "entmax": (0.0, 0.0),
        "asentmax": (0.0, 0.0)}
    softmax = count.filter((pl.col("attention") == "softmax") & (pl.col("length") == 4096))
    assert sorted(softmax["value"].to_list()) == [0.0, 0.0, 77.6]  # one seed of three
    v1_recs, _ = ref.load([ROOT / "results" / "published" / "calibration"
                           / "h100-local_count-v1-repro-2026-12-05.jsonl.gz"])
    v1 = v1_recs.filter(pl.col("task") == "local_count")
    assert v1.filter(pl.col("metric") == "exact_match")["value"].max() == 0.0
    acc = v1.filter((pl.col("metric") == "token_acc") & (pl.col("length") == 4096))
    means = {a: round(v, 1) for a, v in acc.group_by("attention").agg(
        pl.col("value").mean()).iter_rows()}
    assert means == {"softmax": 99.4, "ssmax": 99.3, "entmax": 95.3, "asentmax": 94.9}


def test_shipped_language_logs():
    """lm and niah at the quick profile on the 2-core CPU (2026-12-06): 3 FINISHED seeds of
    softmax, SSMax, entmax and ASEntmax, one run per seed, every length of the quick ladder, no
    non-finite outputs, and the numbers docs/results.md states (at 8x on niah: SSMax 100,
    ASEntmax 98.0, entmax 71.3, softmax 0)."""
    recs, runs = ref.load(ref.paths())
    quick = recs.filter(pl.col("profile") == "quick")
    for task, metric in (("lm", "perplexity"), ("niah", "retrieval_acc")):
        got = quick.filter((pl.col("task") == task) & (pl.col("metric") == metric))
        seeds = got.group_by("attention").agg(pl.col("seed").unique().sort())
        assert dict(seeds.iter_rows()) == {a: [0, 1, 2] for a in ("softmax", "ssmax", "entmax",
                                                                    "asentmax")}, task
        assert got.group_by("attention", "seed").agg(pl.col("run_id").n_unique())[
            "run_id"].max() == 1
        lengths = got.group_by("run_id").agg(pl.col("length").unique().sort())
        assert all(ls == [128, 256, 512, 1024] for ls in lengths["length"].to_list())
        assert all(runs[i].data.tags["suite.device"].startswith("cpu: ") for i in got["run_id"])
        assert quick.filter((pl.col("task") == task) & (pl.col("metric") == "nonfinite"))[
            "value"].max() == 0.0

    def means(task, metric, length):
        got = quick.filter((pl.col("task") == task) & (pl.col("metric") == metric)
                           & (pl.col("length") == length))
        return {a: round(v, 2) for a, v in got.group_by("attention").agg(
            pl.col("value").mean()).iter_rows()}
    assert means("niah", "retrieval_acc", 1024) == {"ssmax": 100.0, "asentmax": 98.0,
                                                    "entmax": 71.33, "softmax": 0.0}
    assert means("niah", "retrieval_acc", 128) == {"ssmax": 100.0, "asentmax": 98.67,
                                                   "entmax": 90.0, "softmax": 65.33}
    assert means("lm", "perplexity", 1024) == {"softmax": 5.92, "ssmax": 5.97, "asentmax": 6.04,
                                               "entmax": 6.12}


@pytest.mark.parametrize("profile", ["repro", "long"])
def test_results_page_is_what_the_shipped_logs_give(store, tmp_path, profile):
    """docs/results.md's generated sections are what `suite leaderboard --reference` writes
    from the shipped logs today: a new log, or a change to how a row is made, shows here until
    the page is written again (the command is in the page's first paragraph)."""
    from results import readme

    page = ROOT / "docs" / "results.md"
    copy = tmp_path / "results.md"
    copy.write_text(page.read_text())
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--reference",
                 "--profile", profile, "--write-readme", str(copy)]) == 0
    assert readme.markers(profile)[0] in page.read_text()
    assert copy.read_text() == page.read_text()


@pytest.mark.slow
def test_shipped_logs_imported_give_the_page_numbers(store):
    """What docs/results.md promises: `suite import` of every shipped log into a fresh store,
    then `suite leaderboard`, gives every mean and std of the reference rows the page is written
    from (per profile, task, attention and length; the reference labels aside)."""
    for path in ref.paths():
        assert main(["import", str(path), "--tracking-uri", store]) == 0
    recs, _ = ref.load(ref.paths())
    cols = ["task", "attention", "length", "exact_match_mean", "exact_match_std",
            "token_acc_mean", "seeds"]

    def rounded(tab):  # the same seeds summed in another order differ in the last bits
        return (tab.select(cols).sort(["task", "attention", "length"])
                .with_columns(pl.col(pl.Float64).round(9)))

    for profile in ("repro", "long"):
        imported, _ = lb.build(store, profile)
        shipped = lb.table(ref.rows_for(recs, profile, None)).with_columns(
            pl.col("attention").str.replace(r" \(reference: .*\)$", ""))
        assert shipped.height > 0
        assert rounded(imported).equals(rounded(shipped)), profile


def _final_metrics(log) -> dict:
    out, names = {}, {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "start":
            names[rec["run"]] = (rec["tags"]["suite.attention"], int(rec["tags"]["suite.seed"]))
        elif rec["event"] == "metrics":
            out.setdefault(names[rec["run"]], {}).update(rec["values"])
    return out


def test_gzip_compressed_logs_read_as_the_plain_ones(store, published, tmp_path, capsys):
    """Long reference logs ship gzip-compressed (``*.jsonl.gz``): the reference rows and
    `suite import` read them as they read the plain log."""
    import gzip

    folder = tmp_path / "gz"
    folder.mkdir()
    packed = folder / "cpu-smoke.jsonl.gz"
    packed.write_bytes(gzip.compress(published.read_bytes()))
    assert ref.paths([str(folder)]) == [packed]
    plain, _ = ref.load([published])
    read, _ = ref.load([packed])
    assert read.sort(["run_id", "metric", "length"]).equals(
        plain.sort(["run_id", "metric", "length"]))
    assert main(["import", str(packed), "--tracking-uri", store]) == 0
    tab, _ = lb.build(store, "smoke")
    assert set(tab["attention"].to_list()) == {"softmax", "entmax"}
    assert set(tab["seeds"].to_list()) == {2}
