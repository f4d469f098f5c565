"""The contract every built-in task meets, generated from the registry: spec round trip,
determinism per seed, independent train/eval streams, ids inside the vocabulary, aligned
targets, exact lengths, mixed-length padding, the longest evaluation length within bounded
memory; plus bad input, ``show`` and the metric accumulator."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch

import tasks
from tasks import IGNORE, SpecError
from tasks.metrics import METRICS, headline

BUILTIN = tasks.names()  # every registered task meets the contract
SEQ2SEQ = ["copy", "flip_flop", "mqmtar", "reverse", "sort"]  # laid out [BOS] src [SEP] trg [EOS]


@pytest.mark.parametrize("name", BUILTIN)
def test_task_describes_itself(name):
    task = tasks.get(name)
    lo, hi = task.train_lengths
    assert task.spec == name
    assert tasks.get(task.spec) == task
    assert task.min_length <= lo <= hi == task.train_length
    assert list(task.eval_lengths) == sorted(set(task.eval_lengths))
    assert task.eval_lengths[-1] >= 8 * task.train_length
    assert task.metrics and set(task.metrics) <= set(METRICS)
    assert {m: METRICS[m].better for m in task.metrics} == dict(task.metrics)
    assert headline(task.metrics) in task.metrics  # the leaderboard can rank it
    assert set(task.metrics.values()) <= {"max", "min"}
    assert isinstance(task.version, int) and task.version >= 1
    assert (type(task).__doc__ or "").strip()
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.version_note = 1  # frozen: no attribute can be set


def test_paper_ladders():
    assert tasks.get("mqmtar").eval_lengths[-1] == 65536
    assert tasks.get("copy").eval_lengths == (64, 128, 256, 512, 1024, 2048, 4096)
    assert 96 in tasks.get("reverse").eval_lengths
    assert tasks.get("local_count").train_lengths == (64, 128)
    assert tasks.get("lm:train_length=64,max_multiple=8").eval_lengths == (64, 128, 256, 512)


def test_spec_is_canonical():
    assert tasks.get("flip_flop:p_write=0.80").spec == "flip_flop:p_write=0.8"
    assert tasks.get("flip_flop:p_write=0.1").spec == "flip_flop"
    assert tasks.get("mqmtar:queries=2,vocab=128.0").spec == "mqmtar:queries=2,vocab=128"


@pytest.mark.parametrize("name", BUILTIN)
def test_same_seed_same_batch(name):
    task = tasks.get(name)
    a = task.sample(task.rng(7, "train"), task.train_length, 4)
    b = task.sample(task.rng(7, "train"), task.train_length, 4)
    c = task.sample(task.rng(8, "train"), task.train_length, 4)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert a.meta.keys() == b.meta.keys()
    assert all(torch.equal(a.meta[k], b.meta[k]) for k in a.meta)
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("name", BUILTIN)
def test_train_and_eval_streams_are_disjoint(name):
    task = tasks.get(name)
    train = task.sample(task.rng(0, "train"), task.train_length, 16)
    held = task.sample(task.rng(0, "eval"), task.train_length, 16)
    train_rows = {tuple(r) for r in train.tokens.tolist()}
    assert not train_rows & {tuple(r) for r in held.tokens.tolist()}
    raw = [task.rng(0, s).integers(0, 2**62, 256) for s in ("train", "eval")]
    assert not set(raw[0].tolist()) & set(raw[1].tolist())


def test_streams_differ_between_tasks():
    a, b = tasks.get("copy"), tasks.get("sort")
    assert a.rng(0, "train").integers(0, 2**62) != b.rng(0, "train").integers(0, 2**62)


@pytest.mark.parametrize("name", BUILTIN)
def test_ids_inside_vocab_and_targets_aligned(name):
    task = tasks.get(name)
    for length in (task.train_lengths[0], task.eval_lengths[1]):
        batch = task.sample(task.rng(1, "eval"), length, 3)
        tok, tgt = batch.tokens, batch.targets
        assert tok.dtype == tgt.dtype == torch.int64 and tok.shape == tgt.shape
        assert tok.shape[0] == 3 and batch.lengths.tolist() == [length] * 3
        assert 0 <= int(tok.min()) and int(tok.max()) < task.vocab_size
        scored = tgt[tgt != IGNORE]
        assert scored.numel() > 0
        assert 0 <= int(scored.min()) and int(scored.max()) < task.vocab_size
        for value in batch.meta.values():
            assert value.shape[0] == 3 and value.dtype == torch.int64


@pytest.mark.parametrize("name", SEQ2SEQ + ["lm", "niah"])
def test_next_token_targets_are_the_next_tokens(name):
    task = tasks.get(name)
    batch = task.sample(task.rng(2, "train"), task.train_length, 4)
    tok, tgt = batch.tokens, batch.targets
    scored = tgt[:, :-1] != IGNORE
    assert torch.equal(tgt[:, :-1][scored], tok[:, 1:][scored])
    if name in SEQ2SEQ:
        sp = task.specials
        assert (tok[:, 0] == sp.bos).all() and (tok[:, -1] == sp.eos).all()
        assert (tgt[:, -2] == sp.eos).all()  # the loss covers EOS
        sep = (tok == sp.sep).nonzero()[:, 1]
        assert (tgt[torch.arange(4), sep] != IGNORE).all()  # SEP predicts the first target


@pytest.mark.parametrize("name", BUILTIN)
def test_mixed_lengths_pad_on_the_right(name):
    task = tasks.get(name)
    lo, hi = task.train_lengths
    batch = task.sample(task.rng(3, "train"), (lo, hi), 24)
    lengths = batch.lengths.tolist()
    assert min(lengths) >= lo and max(lengths) <= hi and len(set(lengths)) > 1
    for i, n in enumerate(lengths):
        alone = task.sample(task.rng(0, "train"), n, 1)
        width = alone.tokens.shape[1]
        assert (batch.tokens[i, width:] == task.pad_id).all()
        assert (batch.targets[i, width:] == IGNORE).all()
        assert (batch.targets[i, :width] != IGNORE).sum() == (alone.targets != IGNORE).sum()
    longest = lengths.index(max(lengths))
    assert (batch.tokens[longest] != task.pad_id).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_longest_eval_length_is_cheap(name):
    """A guard against generation that grows faster than linearly in the length (memory; the
    time is a benchmark's business, not a pass/fail test's)."""
    task = tasks.get(name)
    length = task.eval_lengths[-1]
    task.sample(task.rng(0, "eval"), task.train_length, 1)  # load a corpus outside the window
    tracemalloc.start()
    batch = task.sample(task.rng(0, "eval"), length, 1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert batch.lengths.tolist() == [length]
    assert peak < 200 * length + 2**20, f"{peak / 2**20:.1f} MiB at length {length}"


def test_mqmtar_at_65536():
    task = tasks.get("mqmtar")
    batch = task.sample(task.rng(0, "eval"), 65536, 1)
    example = task.decode(batch, 0)
    assert len(example["pairs"]) == 65536 * 4 // 30 == 8738
    truth = dict(example["pairs"])
    assert [truth[q] for q in example["queries"]] == example["target"]


# -- bad input -------------------------------------------------------------------------------


def test_unknown_task_suggests_the_closest():
    with pytest.raises(SpecError, match=r"Did you mean 'flip_flop'.*Known: flip_flop"):
        tasks.get("flipflop")


def test_unknown_parameter_suggests_the_closest():
    with pytest.raises(SpecError, match=r"'pwrite'.*Did you mean 'p_write'"):
        tasks.get("flip_flop:pwrite=0.8")


@pytest.mark.parametrize(
    "spec, fix",
    [
        ("copy:vocab=1", "vocab >= 2"),
        ("flip_flop:p_write=1.5", r"\(0, 1\)"),
        ("flip_flop:p_write=often", "valid float"),
        ("mqmtar:vocab=8", "use vocab >= 94"),
        ("mqmtar:key_len=1", "use vocab >= 10000 or max_pairs <= 256"),
        ("mqmtar:queries=0", "queries=0 must be >= 1"),
        ("local_count:max_reps=1", "max_reps=1 must be >= 2"),
        ("local_count:vocab=2", "vocab=2 must be >= 3"),
        ("niah:train_length=40", "train_length >= 78"),
        ("lm:corpus=bible", "known: shakespeare, stdlib"),
        ("lm:path=/no/such/file.txt", "is not a file"),
        ("lm:holdout=1", r"holdout=1 must lie in \(0, 1\)"),
    ],
)
def test_bad_parameters_fail_at_once(spec, fix):
    with pytest.raises(SpecError, match=fix):
        tasks.get(spec)


@pytest.mark.parametrize("name", BUILTIN)
def test_length_below_minimum_names_the_minimum(name):
    task = tasks.get(name)
    too_short = task.min_length - 1
    with pytest.raises(SpecError, match=f"below this task's minimum {task.min_length}"):
        task.sample(task.rng(0, "train"), too_short, 2)
    task.sample(task.rng(0, "train"), task.min_length, 2)


def test_minimums_follow_the_task():
    assert tasks.get("mqmtar").min_length == 30  # floor(0.8 * L / 6) >= 4 queries
    assert tasks.get("mqmtar:queries=1").min_length == 8
    assert tasks.get("flip_flop").min_length == 4  # a write and the read
    assert tasks.get("niah").min_length == len(" The special magic number is 1234567. ") + 1


@pytest.mark.parametrize("pe", ["nape", "alibi", "rope", "nope"])
@pytest.mark.parametrize("attention", ["softmax", "ssmax", "entmax", "asentmax"])
def test_local_count_first_block_is_countable_only_after_a_marker(attention, pe):
    """Why local_count has a start marker (version 2): without it, each position of a row's
    first block holds one token after copies of itself, so a model with only relative
    positions computes the same vector at all of them and cannot count the block (exactly
    equal outputs, float64, every built-in attention and position encoding); after the marker
    each position of that block sees a different prefix, and the outputs differ."""
    from suite.model import Decoder, ModelConfig

    task = tasks.get("local_count")
    batch = task.sample(task.rng(0, "eval"), 96, 4)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=task.vocab_size, attention=attention, pe=pe,
                                n_layers=2)).double().eval()
    for i in range(4):
        tokens, labels = batch.tokens[i], batch.targets[i]
        assert tokens[0] == 0 and labels[0] == 0  # the marker, a block of its own
        end = 1 + int((labels[1:] == 0).nonzero()[1])  # the first block: tokens[1:end]
        with torch.no_grad():
            marked = model(tokens[None])[0, 1:end]  # (r, V)
            unmarked = model(tokens[None, 1:])[0, : end - 1]  # version 1's row: no marker
        assert torch.equal(unmarked, unmarked[:1].expand_as(unmarked))
        gaps = (marked[1:] - marked[:-1]).abs().amax(dim=-1)  # (r - 1,)
        assert gaps.min() > 1e-6, gaps


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: t.sample(t.rng(0, "train"), 64.0, 2), "length must be an int"),
        (lambda t: t.sample(t.rng(0, "train"), 64, 0), "batch_size must be a positive int"),
        (lambda t: t.sample(t.rng(0, "train"), (64, 32), 2), "is empty"),
        (lambda t: t.sample(t.rng(0, "train"), 64, 2, split="test"), "unknown split 'test'"),
        (lambda t: t.rng(0, "valid"), "unknown split 'valid'"),
    ],
)
def test_bad_sample_calls(call, message):
    with pytest.raises(SpecError, match=message):
        call(tasks.get("copy"))


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="numpy Generator"):
        tasks.get("copy").sample(0, 64, 2)


def test_mqmtar_vocab_checked_at_the_requested_length():
    task = tasks.get("mqmtar:vocab=4,max_pairs=16")  # 16 keys suffice up to the cap
    task.sample(task.rng(0, "eval"), 65536, 1)
    with pytest.raises(SpecError, match="max_pairs <= 16"):
        tasks.get("mqmtar:vocab=4,max_pairs=17")


def test_short_user_text_fails_with_its_size(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, " * 20)
    task = tasks.get(f"lm:path={text}")
    task.sample(task.rng(0, "train"), 64, 2)
    with pytest.raises(SpecError, match=r"eval part of the text has 40 bytes.*longer text"):
        task.sample(task.rng(0, "eval"), 64, 2)


# -- show ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_show_renders_the_decoded_fields(name):
    task = tasks.get(name)
    text = tasks.show(name)
    assert text.startswith(f"{name} (version {task.version}): length {task.train_length}")
    example = task.decode(task.sample(task.rng(0, "eval"), task.train_length, 1), 0)
    for key in example:
        assert f"\n{key}: " in text
    assert text == tasks.show(name)


def test_show_long_lengths_stay_short():
    text = tasks.show("mqmtar", length=65536)
    assert "pairs: [8738]" in text and "(8706 more)" in text
    assert len(text) < 4000
    assert "p_write=0.8" in tasks.show("flip_flop:p_write=0.8", length=128, seed=3)


# -- metrics ---------------------------------------------------------------------------------


def one_hot_logits(targets: torch.Tensor, vocab: int) -> torch.Tensor:
    logits = torch.zeros(*targets.shape, vocab)  # (B, T, V)
    logits.scatter_(2, targets.clamp(min=0)[..., None], 20.0)
    return logits


def test_meter_scores_teacher_forced_predictions():
    task = tasks.get("copy")
    batch = task.sample(task.rng(0, "eval"), 8, 4)
    logits = one_hot_logits(batch.targets, task.vocab_size)
    meter = task.meter()
    meter.update(logits, batch.targets)
    assert meter.result() == {"exact_match": 100.0, "token_acc": 100.0, "nonfinite": 0.0}
    wrong = logits.clone()
    pos = int((batch.targets[0] != IGNORE).nonzero()[0])
    wrong[0, pos] = wrong[0, pos].roll(1)
    meter = task.meter()
    meter.update(wrong, batch.targets)
    meter.update(logits, batch.targets)
    result = meter.result()
    assert result["exact_match"] == pytest.approx(100 * 7 / 8)
    assert result["token_acc"] == pytest.approx(100 * (8 * 9 - 1) / (8 * 9))


def test_meter_counts_non_finite_sequences_as_wrong():
    """A sequence whose logits hold a NaN (or an inf) anywhere scores nothing, even where the
    argmax, which picks the NaN's index, lands on the target; the meter reports its share."""
    task = tasks.get("copy")
    batch = task.sample(task.rng(0, "eval"), 8, 4)
    logits = one_hot_logits(batch.targets, task.vocab_size)  # (4, T, V), all right
    pos = (batch.targets != IGNORE).nonzero()
    (b0, t0), (b1, t1) = pos[pos[:, 0] == 1][0], pos[pos[:, 0] == 2][0]
    logits[b0, t0, batch.targets[b0, t0]] = float("nan")  # argmax still picks the target
    logits[b1, t1, 0] = float("inf")
    assert logits[1].argmax(-1)[t0] == batch.targets[1, t0]
    meter = task.meter()
    meter.update(logits, batch.targets)
    result = meter.result()
    assert result["nonfinite"] == 50.0
    assert result["exact_match"] == 50.0
    assert result["token_acc"] == 50.0
    lm = tasks.get("lm")
    batch = lm.sample(lm.rng(0, "eval"), 32, 2)
    logits = torch.zeros(2, 32, lm.vocab_size)
    logits[1, 5, 3] = float("nan")
    meter = lm.meter()
    meter.update(logits, batch.targets)
    assert meter.result()["perplexity"] == float("inf")
    assert meter.result()["nonfinite"] == 50.0


def test_meter_perplexity_of_uniform_logits_is_the_vocab():
    task = tasks.get("lm")
    batch = task.sample(task.rng(0, "eval"), 32, 2)
    meter = task.meter()
    meter.update(torch.zeros(2, 32, task.vocab_size), batch.targets)
    assert meter.result()["perplexity"] == pytest.approx(task.vocab_size)
    meter = task.meter()
    meter.update(one_hot_logits(batch.targets, task.vocab_size), batch.targets)
    assert meter.result()["perplexity"] < 1.01


def test_meter_rejects_unknown_metrics():
    with pytest.raises(ValueError, match="unknown metric"):
        tasks.Meter(("bleu",))


def test_any_numpy_generator_works():
    batch = tasks.get("two_back").sample(np.random.default_rng(0), 16, 2)
    assert isinstance(batch.tokens, torch.Tensor) and batch.tokens.is_contiguous()
