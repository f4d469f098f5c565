"""The attention diagnostics in the leaderboard's report and the README section: per task, one
table per quantity (normalized entropy, support size, max weight, target mass, learned scale),
attention by length, the mean over seeds; checked against the shipped sort reference logs read
line by line here, and on runs that log none (a plain-function plugin)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from results import leaderboard as lb
from results import readme
from results import reference as ref
from results.report import CUT, latest, make, note_of
from results.tracking import Tracker
from suite.cli import main

SORT_LOG = ref.PUBLISHED / "h200-sort-repro-2026-11-30.jsonl"
LENGTHS = (64, 128, 256, 512)


def raw_final_metrics(log: Path) -> dict[tuple[str, int], dict[str, float]]:
    """{(attention, seed): {key: value}} of a log's FINISHED cell runs, read from the JSON
    lines directly: each metric's value at its highest step (a later line wins a tie)."""
    start, status, values = {}, {}, defaultdict(dict)
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "start" and rec["tags"].get("suite.kind") == "cell":
            start[rec["run"]] = (rec["tags"]["suite.attention"], int(rec["tags"]["suite.seed"]))
        elif rec["event"] == "end":
            status[rec["run"]] = rec["status"]
        elif rec["event"] == "metrics":
            for key, value in rec["values"].items():
                old = values[rec["run"]].get(key)
                if old is None or rec["step"] >= old[0]:
                    values[rec["run"]][key] = (rec["step"], value)
    return {start[r]: {k: v for k, (_, v) in values[r].items()} for r in start
            if status.get(r) == "FINISHED"}


def expected_mean(raw, attention: str, key: str) -> float:
    got = [m[key] for (att, _), m in raw.items() if att == attention]
    assert len(got) == 3, (attention, key, len(got))  # three seeds, each with the key
    return sum(got) / len(got)


def label_of(tab: pl.DataFrame, attention: str) -> str:
    (found,) = [a for a in tab["attention"].unique().to_list()
                if a.startswith(f"{attention} (reference: ")]
    return found


def md_rows(text: str, caption: str) -> dict[str, list[str]]:
    """The rows of the markdown table that follows the line starting with ``caption``."""
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(caption))
    rows = {}
    for line in lines[i + 4:]:  # caption, blank, header, rule
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_diagnostics_of_the_shipped_sort_log_are_the_logs_means_over_seeds():
    raw = raw_final_metrics(SORT_LOG)
    recs, _ = ref.load([SORT_LOG])
    recs = ref.rows_for(recs, "repro", ["sort"])
    tab, diag = lb.table(recs), lb.diagnostics(recs)
    # what the sort runs log: no target mass (sort has no target positions); a learned scale
    # only for asentmax (and ssmax)
    assert "target_mass_mean" not in diag.columns
    assert {"entropy_norm_mean", "support_mean", "max_weight_mean", "scale_mean"} <= set(
        diag.columns)
    for att in ("entmax", "asentmax"):
        label = label_of(tab, att)
        for name in ("entropy_norm", "support", "max_weight", "scale"):
            for n in LENGTHS:
                row = diag.filter((pl.col("attention") == label) & (pl.col("length") == n))
                assert row.height == 1 and row["seeds"][0] == 3
                got = row[f"{name}_mean"][0]
                if name == "scale" and att == "entmax":
                    assert got is None and f"scale_L{n}" not in raw[(att, 0)]
                    continue
                assert got == pytest.approx(expected_mean(raw, att, f"{name}_L{n}"), rel=1e-12)

    # the markdown tables show those means, rows labelled as in the main table
    text = lb.markdown(tab, None, "", diag)
    assert "### sort: attention diagnostics" in text and "target mass" not in text
    entmax, asentmax = label_of(tab, "entmax"), label_of(tab, "asentmax")
    heads = "| attention | 64 (1x) | 128 (2x) | 256 (4x) | 512 (8x) |"
    assert text.count(heads) == 4  # entropy, support, max weight, scale
    support = md_rows(text, "*support size")
    assert support[entmax] == [f"{expected_mean(raw, 'entmax', f'support_L{n}'):.1f}"
                               for n in LENGTHS]
    assert support[entmax][1] == "67.4"  # support_L128 of entmax, mean over seeds 0-2
    entropy = md_rows(text, "*normalized entropy")
    assert entropy[asentmax] == [f"{expected_mean(raw, 'asentmax', f'entropy_norm_L{n}'):.3f}"
                                 for n in LENGTHS]
    scale = md_rows(text, "*learned scale")
    assert entmax not in scale  # it learns no scale: no row of "-"
    assert scale[asentmax] == [f"{expected_mean(raw, 'asentmax', f'scale_L{n}'):.2f}"
                               for n in LENGTHS]
    # every row of the main table, in its order (ranked)
    assert list(support) == [a for a, *_ in lb.ranking(tab)] == list(
        md_rows(text, "exact match %"))


def test_report_and_readme_show_the_reference_diagnostics(store, tmp_path, capsys):
    """`suite leaderboard --reference`: leaderboard.md and .html hold the tables, the
    leaderboard run logs them, and the README section written by --write-readme has them."""
    rep = make(store, "repro", tmp_path / "out", log=True, reference=[str(SORT_LOG)])
    md = (tmp_path / "out/leaderboard.md").read_text()
    page = (tmp_path / "out/leaderboard.html").read_text()
    raw = raw_final_metrics(SORT_LOG)
    entmax = label_of(rep.table, "entmax")
    want = [f"{expected_mean(raw, 'entmax', f'max_weight_L{n}'):.3f}" for n in LENGTHS]
    assert md_rows(md, "*max weight")[entmax] == want
    assert "<h3>sort: attention diagnostics</h3>" in page and all(w in page for w in want)
    # the leaderboard run: the markdown (with the tables) and the diagnostics as a table
    _, run_id = latest(Tracker(store))
    client = MlflowClient(store)
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"leaderboard.md", "leaderboard.html", "diagnostics_table.json"} <= names
    got = json.loads(Path(client.download_artifacts(run_id, "diagnostics_table.json",
                                                    str(tmp_path / "dl"))).read_text())
    assert "support_mean" in got["columns"] and len(got["data"]) == rep.diagnostics.height
    assert client.get_run(run_id).data.tags["mlflow.note.content"] == note_of(md)

    # the README section, written between the repro profile's markers of a copy
    begin, end = readme.markers("repro")
    path = tmp_path / "README.md"
    path.write_text(f"# x\n\n{begin}\n{end}\n")
    assert main(["leaderboard", "--tracking-uri", store, "--no-log", "--profile", "repro",
                 "--reference", str(SORT_LOG), "--write-readme", str(path)]) == 0
    section = path.read_text()
    assert "Attention diagnostics against length, sort: mean over seeds" in section
    assert md_rows(section, "*support size")[entmax] == [
        f"{expected_mean(raw, 'entmax', f'support_L{n}'):.1f}" for n in LENGTHS]
    # the README's rows are in its main table's order
    assert list(md_rows(section, "*support size")) == list(
        md_rows(section, "exact match %"))


def rec(run, att, seed, length, metric, value):
    key = lb.config_key({"attention": att, "task": "flip_flop", "profile": "quick"})
    return (run, 1_790_000_000_000, "flip_flop", att, seed, "quick", "cpu: x86_64", "abc1234",
            key, length, 64, metric, value)


def test_runs_without_diagnostics_render():
    """Older logs and plain-function variants log no diagnostics: no table where none has
    any, "-" in the cells of a row without them, and nothing else changes."""
    rows = [rec(f"{a}{s}", a, s, n, m, v) for a in ("softmax", "plain") for s in (0, 1)
            for n in (64, 256) for m, v in (("exact_match", 50.0 + s), ("token_acc", 80.0))]
    bare = pl.DataFrame(rows, schema=lb.SCHEMA, orient="row")
    tab, diag = lb.table(bare), lb.diagnostics(bare)
    assert diag.is_empty() and lb.diagnostic_views(tab, diag, ["softmax"]) == []
    assert lb.markdown(tab, None, "", diag) == lb.markdown(tab)
    assert lb.html(tab, None, "", None, diag) == lb.html(tab)
    # softmax logs them (one seed has target mass at 256 only), "plain" does not
    rows += [rec(f"softmax{s}", "softmax", s, n, m, v) for s in (0, 1) for n in (64, 256)
             for m, v in (("entropy_norm", 0.5 + s / 10), ("support", 10.0 * n))]
    rows.append(rec("softmax0", "softmax", 0, 256, "target_mass", 0.25))
    some = pl.DataFrame(rows, schema=lb.SCHEMA, orient="row")
    tab, diag = lb.table(some), lb.diagnostics(some)
    assert lb.table(bare).equals(tab)  # the main table is untouched by the diagnostics
    text = lb.markdown(tab, None, "", diag)
    assert md_rows(text, "*normalized entropy") == {"softmax": ["0.550", "0.550"],
                                                    "plain": ["-", "-"]}
    assert md_rows(text, "*support size") == {"softmax": ["640.0", "2560.0"],
                                              "plain": ["-", "-"]}
    assert md_rows(text, "*target mass") == {"softmax": ["-", "0.250"], "plain": ["-", "-"]}
    assert "max weight" not in text and "learned scale" not in text  # no run has them
    assert "<td>-</td>" in lb.html(tab, None, "", None, diag)


def test_plain_function_plugin_beside_softmax(store, tmp_path, capsys):
    """Real runs: a plain-function plugin (no weights to inspect) and softmax, trained on the
    CPU into a log; the report and the README section render, the plugin's cells "-"."""
    plugin = tmp_path / "plain_diag.py"
    plugin.write_text(
        "import attentions\n\n@attentions.register('plain_diag')\n"
        "def plain_diag(q, k, v, *, causal, bias):\n"
        "    z = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5\n"
        "    z = z if bias is None else z + bias\n"
        "    w = z.relu().tril() if causal else z.relu()\n"
        "    return w @ v / w.sum(-1, keepdim=True).clamp_min(1e-6)\n")
    log = tmp_path / "cpu-smoke.jsonl"
    assert main(["run", "--profile", "smoke", "--plugin", str(plugin), "--attention",
                 "plain_diag", "--attention", "softmax", "--tracking-uri", f"jsonl:{log}",
                 "--no-progress"]) == 0
    raw = raw_final_metrics(log)
    assert not any(k.startswith("support_") for k in raw[("plain_diag", 0)])
    rep = make(store, None, tmp_path / "out", log=False, reference=[str(log)])
    md = (tmp_path / "out/leaderboard.md").read_text()
    support = md_rows(md, "*support size")
    plain, soft = label_of(rep.table, "plain_diag"), label_of(rep.table, "softmax")
    lengths = sorted(rep.table["length"].unique().to_list())
    assert support[plain] == ["-"] * len(lengths)
    assert support[soft] == [f"{raw[('softmax', 0)][f'support_L{n}']:.1f}" for n in lengths]
    assert "learned scale" not in md
    section = readme.section(Tracker(store), rep.profile, rep.records, rep.reference_runs)
    assert md_rows(section, "*support size")[plain] == ["-"] * len(lengths)


def test_the_runs_note_keeps_whole_tables_when_the_report_is_too_long():
    """The leaderboard run's note is an MLflow tag (8000 characters at most). A report that
    does not fit loses its diagnostics tables first (a line says where they are), then whole
    paragraphs from the end; a table is never cut in half, and the main table stays."""
    recs, _ = ref.load([SORT_LOG])
    recs = ref.rows_for(recs, "repro", ["sort"])
    tab, diag = lb.table(recs), lb.diagnostics(recs)
    text = lb.markdown(tab, None, "", diag)
    assert note_of(text, limit=len(text)) == text
    short = note_of(text, limit=len(text) - 1)
    assert "*support size" in text and "*support size" not in short
    assert "### sort: attention diagnostics" in short
    assert "(the diagnostics tables: in the artifact leaderboard.md)" in short
    assert md_rows(short, "exact match %") == md_rows(text, "exact match %")
    main_table = text.index("exact match %")
    tiny = note_of(text, limit=main_table + 200)  # room for the heading, not for the table
    assert tiny.endswith(CUT) and len(tiny) <= main_table + 200
    assert "| " not in tiny  # no row of a table that did not fit
    for limit in range(len(CUT) + 10, len(text), 97):  # wherever the cut falls
        note = note_of(text, limit=limit)
        assert len(note) <= limit
        for para in note.split("\n\n"):
            if para.startswith("|"):
                assert para in text.split("\n\n")  # a whole table of the report
