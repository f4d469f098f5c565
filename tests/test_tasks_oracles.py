"""Targets are right by construction: every example is decoded and checked against a
plain-Python oracle of its task (sorted, reversed, recalled values, last written bit, counts,
the token two back, the needle's number), at random lengths and seeds, fixed and mixed."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasks
from tasks import corpus

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_copy(task, ex, n):
    assert len(ex["source"]) == n and ex["target"] == ex["source"]
    assert all(0 <= s < task.vocab for s in ex["source"])


def check_reverse(task, ex, n):
    assert len(ex["source"]) == n and ex["target"] == ex["source"][::-1]


def check_sort(task, ex, n):
    assert len(ex["source"]) == n and ex["target"] == sorted(ex["source"])


def check_mqmtar(task, ex, n):
    pairs, queries = ex["pairs"], ex["queries"]
    unit = task.key_len + task.value_len + 2  # key, ':', value, at least one space
    assert len(pairs) == min(n * 4 // (5 * unit), task.max_pairs)  # floor(0.8 n / unit)
    keys = [k for k, _ in pairs]
    assert len(set(keys)) == len(keys) and len({v for _, v in pairs}) == len(pairs)
    assert all(len(k) == task.key_len and all(0 <= s < task.vocab for s in k) for k in keys)
    assert len(queries) == task.queries and set(queries) <= set(keys)
    recall = dict(pairs)
    assert ex["target"] == [recall[q] for q in queries]


def check_flip_flop(task, ex, n):
    ops = ex["ops"]
    assert len(ops) == n // 2
    assert ops[0][0] == "write" and ops[-1] == ("read", None)
    assert {c for c, _ in ops[1:-1]} <= {"write", "ignore"}
    assert all(b in (0, 1) for _, b in ops[:-1])
    last_write = [b for c, b in ops if c == "write"][-1]
    assert ex["target"] == last_write


def check_local_count(task, ex, n):
    source, labels = ex["source"], ex["labels"]
    assert len(source) == len(labels) == n
    assert source[0] == 0 and all(1 <= s < task.vocab for s in source[1:])  # the start marker
    run = 0
    for t in range(n):
        run = run + 1 if t and source[t] == source[t - 1] else 0
        assert labels[t] == run
    runs = [len(m.group(0)) for m in re.finditer(r"(.)\1*", "".join(chr(65 + s) for s in source))]
    assert runs[0] == 1  # the marker is a block of one
    assert all(2 <= r <= task.max_reps for r in runs[1:-1]) and 1 <= runs[-1] <= task.max_reps


def check_two_back(task, ex, n):
    source, labels = ex["source"], ex["labels"]
    assert len(source) == n and source[0] == 0 and all(1 <= s < task.vocab for s in source[1:])
    assert labels == [source[t - 2] if t >= 2 else 0 for t in range(n)]


def check_niah(task, ex, n):
    assert len(ex["context"].encode("utf-8", "surrogateescape")) == n
    needle = f" The special magic number is {ex['answer']}. "
    assert ex["needle"] == needle and len(ex["answer"]) == task.digits
    assert (
        ex["context"]
        .encode("utf-8", "surrogateescape")[ex["position"] :]
        .startswith(needle.encode())
    )


def check_lm(task, ex, n):
    window = (ex["text"] + ex["next"]).encode("utf-8", "surrogateescape")
    assert len(window) == n + 1 and window in corpus.load(task.corpus, task.path).tobytes()


ORACLES = {
    "copy": check_copy,
    "reverse": check_reverse,
    "sort": check_sort,
    "mqmtar": check_mqmtar,
    "flip_flop": check_flip_flop,
    "local_count": check_local_count,
    "two_back": check_two_back,
    "niah": check_niah,
    "lm": check_lm,
}
SPECS = [
    "copy",
    "reverse",
    "sort:vocab=8",
    "mqmtar",
    "mqmtar:vocab=20,key_len=3,value_len=3,queries=2",
    "flip_flop",
    "flip_flop:p_write=0.8",
    "local_count",
    "local_count:max_reps=5,vocab=3",
    "two_back",
    "niah",
    "niah:digits=3,corpus=stdlib",
    "lm",
    "lm:corpus=stdlib",
]


def check_all(task, batch):
    for i in range(batch.batch_size):
        ORACLES[task.name](task, task.decode(batch, i), int(batch.lengths[i]))


def test_every_builtin_has_an_oracle():
    assert set(ORACLES) == {
        n for n in tasks.names() if tasks.get(n).__module__.startswith("tasks.")
    }


@pytest.mark.parametrize("spec", SPECS)
@SETTINGS
@given(data=st.data())
def test_targets_match_the_oracle(spec, data):
    task = tasks.get(spec)
    length = data.draw(st.integers(task.min_length, 4 * task.train_length), label="length")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    split = data.draw(st.sampled_from(["train", "eval"]), label="split")
    check_all(task, task.sample(task.rng(seed, split), length, 3))


@pytest.mark.parametrize("spec", SPECS)
def test_mixed_length_batches_match_the_oracle(spec):
    task = tasks.get(spec)
    check_all(task, task.sample(task.rng(5, "train"), task.train_lengths, 12))


@pytest.mark.parametrize("name", ["mqmtar", "niah", "flip_flop"])
def test_target_positions_point_at_the_fact(name):
    task = tasks.get(name)
    batch = task.sample(task.rng(9, "eval"), 256, 4)
    for i in range(4):
        ex = task.decode(batch, i)
        at = batch.meta["target_positions"][i]
        row = batch.tokens[i]
        if name == "mqmtar":
            keys = [tuple(int(t) - 3 for t in row[p]) for p in at]
            values = [tuple(int(t) - 3 for t in row[p]) for p in batch.meta["value_positions"][i]]
            assert keys == ex["queries"] and values == ex["target"]
        elif name == "niah":
            assert bytes(row[at].tolist()).decode() == ex["answer"]
            assert int(at[0]) == 1 + ex["position"] + len(" The special magic number is ")
            scored = batch.targets[i][batch.targets[i] != -100]
            assert bytes(scored.tolist()).decode() == ex["answer"]  # only the digits
        else:
            assert int(row[at[0]]) == ex["target"] and int(row[at[0] - 1]) == 2  # a write


def test_flip_flop_write_rate_follows_p_write():
    for p in (0.1, 0.8):
        task = tasks.get(f"flip_flop:p_write={p}")
        batch = task.sample(task.rng(0, "train"), 1024, 32)
        middle = [c for i in range(32) for c, _ in task.decode(batch, i)["ops"][1:-1]]
        assert abs(middle.count("write") / len(middle) - p) < 0.02


def test_local_count_blocks_average_half_max_reps():
    task = tasks.get("local_count")
    batch = task.sample(task.rng(0, "train"), 4096, 8)
    starts = sum(task.decode(batch, i)["labels"].count(0) for i in range(8))
    assert 8 * 4096 / starts == pytest.approx(25, rel=0.08)  # E[U{2..48}] = 25


def test_mqmtar_keys_are_spread_over_the_alphabet():
    task = tasks.get("mqmtar")
    batch = task.sample(task.rng(0, "train"), 4096, 4)
    symbols = {s for i in range(4) for k, v in task.decode(batch, i)["pairs"] for s in k + v}
    assert symbols == set(range(256))


def test_lm_windows_are_real_text_from_their_part():
    task = tasks.get("lm")
    train_text = corpus.part(task.corpus, task.path, task.holdout, "train").tobytes()
    eval_text = corpus.part(task.corpus, task.path, task.holdout, "eval").tobytes()
    assert len(train_text) + len(eval_text) > 4_000_000  # the Shakespeare corpus
    assert b"To be, or not to be" in train_text + eval_text
    for split, own, other in (("train", train_text, eval_text), ("eval", eval_text, train_text)):
        batch = task.sample(task.rng(1, split), 200, 4)
        for i in range(4):
            window = bytes(batch.tokens[i].tolist()) + bytes([int(batch.targets[i, -1])])
            assert window in own and window not in other
        assert (batch.targets[:, :-1] == batch.tokens[:, 1:]).all()


def test_split_can_be_named_explicitly():
    task = tasks.get("lm")
    rng_a, rng_b = task.rng(4, "train"), task.rng(4, "train")
    inferred = task.sample(rng_a, 100, 2)
    named = task.sample(rng_b, 100, 2, split="eval")
    eval_text = corpus.part(task.corpus, task.path, task.holdout, "eval").tobytes()
    assert bytes(named.tokens[0].tolist()) in eval_text
    assert bytes(inferred.tokens[0].tolist()) not in eval_text


def test_markdown_markup_is_stripped():
    text = corpus.load("shakespeare", "").tobytes()
    assert b"**" not in text and b"_" not in text and b"\n#" not in text and b"\\[" not in text
    assert b"HAMLET\nTo be, or not to be: that is the question:" in text


def test_user_text_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(bytes(range(256)) * 40)
    task = tasks.get(f"niah:path={path}")
    assert task.spec == f"niah:path={path}"
    check_all(task, task.sample(task.rng(0, "eval"), 300, 2))
    lm = tasks.get(f"lm:path={path},holdout=0.5")
    batch = lm.sample(lm.rng(0, "train"), 64, 3)
    first = batch.tokens[:, 0]
    assert (batch.tokens == (first[:, None] + torch.arange(64)) % 256).all()


@pytest.mark.parametrize("length", [30, 31, 64, 97, 1000])
def test_mqmtar_kv_region_is_exactly_the_length(length):
    task = tasks.get("mqmtar")
    batch = task.sample(task.rng(0, "eval"), length, 2)
    sep = (batch.tokens[0] == task.specials.sep).nonzero()[0, 0]
    assert int(sep) - 1 == length + task.queries * (task.key_len + 1)
    assert int(batch.tokens[0, length]) == 0  # the region ends in a space, then '?' queries
    assert int(batch.tokens[0, length + 1]) == 2
