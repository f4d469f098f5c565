"""The run schema and the metric table: the names, keys and filter strings every part of the
suite reads (executors, trainer, console, leaderboard), and the selection rules built on them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from results import schema
from tasks.metrics import METRICS, headline, selection_score, summary


@given(st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True), st.integers(1, 1 << 20))
def test_metric_keys_round_trip(name, length):
    assert schema.split_metric_key(schema.metric_key(name, length)) == (name, length)


@pytest.mark.parametrize("key", ["exact_match", "train_loss", "x_L", "_L64", "em_Lx12"])
def test_keys_without_a_length_are_not_split(key):
    assert schema.split_metric_key(key) is None


def test_filter_strings():
    assert schema.where(kind=schema.CELL, status="FINISHED") == (
        "tags.`suite.kind` = 'cell' and attributes.status = 'FINISHED'")
    assert schema.where(config_hash="ab12", sweep_id="s1", status="RUNNING") == (
        "tags.`suite.config_hash` = 'ab12' and tags.`suite.sweep_id` = 's1' and "
        "attributes.status = 'RUNNING'")
    with pytest.raises(ValueError, match="status 'DONE' is not one of"):
        schema.where(status="DONE")
    with pytest.raises(ValueError, match="cannot hold a quote"):
        schema.where(config_hash="x' or '1'='1")


def test_cell_tags_and_their_fields():
    tags = schema.cell_tags({"config_hash": "ab12", "seed": 3, "task": "t"}, {"torch": "2.13"})
    assert tags == {schema.KIND: schema.CELL, schema.HASH: "ab12", "suite.seed": "3",
                    "suite.task": "t", "version.torch": "2.13"}
    assert schema.fields(tags) == {"kind": "cell", "config_hash": "ab12", "seed": "3",
                                  "task": "t"}


def test_uri_kinds():
    assert schema.is_http("http://h:5000") and schema.is_http("https://h")
    assert not schema.is_http("sqlite:///x.db") and not schema.is_http(None)
    assert schema.is_offline("jsonl:/tmp/x.jsonl") and not schema.is_offline("file:///tmp")


def test_every_metric_is_described():
    for name, metric in METRICS.items():
        assert metric.name == name and metric.better in ("max", "min")
        assert metric.label and metric.short and metric.digits >= 0


def test_headline_is_the_first_headline_metric_reported():
    assert headline(["token_acc", "exact_match"]) == "exact_match"
    assert headline(["token_acc", "retrieval_acc"]) == "retrieval_acc"
    assert headline(["perplexity"]) == "perplexity"
    with pytest.raises(ValueError, match="no headline metric among"):
        headline(["token_acc"])


def test_selection_score_orders_checkpoints():
    """Higher is better: exact match first, token accuracy breaks its ties; lower
    perplexity is better."""
    early, later = {"exact_match": 0.0, "token_acc": 40.0}, {"exact_match": 0.0, "token_acc": 60.0}
    assert selection_score(later) > selection_score(early)
    assert selection_score({"exact_match": 1.0, "token_acc": 0.0}) > selection_score(later)
    assert selection_score({"perplexity": 3.0}) > selection_score({"perplexity": 4.0})
    assert selection_score({"retrieval_acc": 50.0, "token_acc": 0.0}) == 50.0


def test_console_summary():
    assert summary({"exact_match": 95.2, "token_acc": 97.6, "diagnostics": {}}) == "95%/98%"
    assert summary({"retrieval_acc": 40.0, "token_acc": 70.0}) == "40%/70%"
    assert summary({"perplexity": 3.254}) == "ppl 3.25"
