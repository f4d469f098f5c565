"""Attention diagnostics (docs/paper.md, "What to measure"), returned per length by the
evaluation."""

import math

import pytest
import torch
import torch.nn.functional as F

import tasks
from suite.evaluate import evaluate
from suite.model import Decoder, ModelConfig, Probe


def _flat_model(attention, pe="nope"):
    """A one-layer model whose queries are 0: every visible key gets the same score."""
    model = Decoder(ModelConfig(vocab_size=20, n_layers=1, n_heads=2, head_dim=8, d_model=16,
                                attention=attention, pe=pe))
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[:16].zero_()  # W_q = 0
    return model


@pytest.mark.parametrize("attention", ["softmax", "entmax", "entmax:alpha=1.25", "sparsemax"])
def test_uniform_attention_statistics_are_exact(attention):
    model = _flat_model(attention)
    rows = torch.tensor([[3, 9, 15], [0, 7, 15]])  # query positions; n = row + 1 keys
    targets = torch.tensor([[[0, 1], [0, 1], [0, 1]], [[2, -1], [2, -1], [2, -1]]])
    probe = Probe(rows=rows, targets=targets)
    model.set_probe(probe)
    model(torch.randint(0, 20, (2, 16)))
    (stat,) = probe.stats
    n = (rows + 1).double()
    torch.testing.assert_close(stat["support"].double(), n.mean().expand(2))
    torch.testing.assert_close(stat["max_weight"].double(), (1 / n).mean().expand(2))
    ent = torch.where(n > 1, torch.ones_like(n), torch.zeros_like(n))  # H/log n = 1; 0 at n=1
    torch.testing.assert_close(stat["entropy_norm"].double(), ent.mean().expand(2), atol=1e-6,
                               rtol=0)
    mass = torch.tensor([[2 / 4, 2 / 10, 2 / 16], [0, 1 / 8, 1 / 16]], dtype=torch.float64)
    torch.testing.assert_close(stat["target_mass"].double(), mass.mean().expand(2), atol=1e-6,
                               rtol=0)


def test_learned_scales_are_reported():
    model = _flat_model("asentmax:init_std=0,beta_bias=0.5,gamma_bias=0.25")
    rows = torch.tensor([[4, 10]])
    probe = Probe(rows=rows)
    model.set_probe(probe)
    model(torch.randint(0, 20, (1, 12)))
    gamma = 2 * math.tanh(0.25)
    want = [1 + F.softplus(torch.tensor(0.5)).item() * math.log(r + 2) ** gamma for r in (4, 10)]
    assert probe.stats[0]["scale"].tolist() == pytest.approx([sum(want) / 2] * 2, rel=1e-5)


@pytest.mark.parametrize("name", ["mqmtar", "flip_flop", "niah", "copy"])
def test_evaluate_returns_diagnostics_per_length(name):
    task = tasks.get(name)
    model = Decoder(ModelConfig(vocab_size=task.vocab_size, attention="entmax", n_heads=4))
    lengths = list(task.eval_lengths[:2])
    out = evaluate(model, task, lengths, samples=3, seed=0, device=torch.device("cpu"))
    assert list(out) == lengths
    for length, res in out.items():
        d = res["diagnostics"]
        assert 0 <= d["entropy_norm"] <= 1 and 1 <= d["support"] and 0 < d["max_weight"] <= 1
        assert len(d["support_heads"]) == 2 and len(d["support_heads"][0]) == 4
        if "target_positions" in task.sample(task.rng(0, "eval"), length, 1).meta:
            assert 0 <= d["target_mass"] <= d["target_mass_top"] <= 1
        else:
            assert "target_mass" not in d


def test_softmax_disperses_where_entmax_does_not():
    """Prop. 1 in miniature: random logits, softmax's normalized entropy near 1 at long n,
    entmax's support a small fraction of n."""
    torch.manual_seed(0)
    stats = {}
    for attention in ("softmax", "entmax"):
        model = Decoder(ModelConfig(vocab_size=50, n_layers=1, n_heads=2, head_dim=16,
                                    d_model=32, attention=attention, pe="nope"))
        with torch.no_grad():
            model.blocks[0].attn.qkv.weight.mul_(10)  # spread the logits
        probe = Probe(rows=torch.tensor([[1023]]))
        model.set_probe(probe)
        torch.manual_seed(1)
        model(torch.randint(0, 50, (1, 1024)))
        stats[attention] = probe.stats[0]
    assert stats["softmax"]["support"].min() == 1024
    assert stats["entmax"]["support"].max() < 0.5 * 1024
    assert (stats["softmax"]["entropy_norm"] > stats["entmax"]["entropy_norm"]).all()


def test_diagnostics_average_the_first_probe_sequences_however_batched(monkeypatch):
    """The diagnostics of a length are the mean over its first PROBE_SEQUENCES sequences (each
    weighted by its share), the same whether the evaluation batches hold one sequence or many;
    with one probed sequence they differ (a single sequence is a noisy estimate)."""
    import suite.evaluate as E

    task = tasks.get("sort")
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=task.vocab_size, attention="entmax", n_heads=2,
                                n_layers=2, d_model=32, head_dim=16))
    width = task.sample(task.rng(0, "eval"), 64, 1).tokens.shape[1]

    def diag(eval_tokens):
        out = evaluate(model, task, [64], samples=12, seed=0, device=torch.device("cpu"),
                       eval_tokens=eval_tokens)
        return out[64]["diagnostics"]

    monkeypatch.setattr(E, "PROBE_SEQUENCES", 10)
    one_by_one, in_threes, at_once = diag(width), diag(3 * width), diag(64 * width)
    for key in ("entropy_norm", "support", "max_weight"):
        assert one_by_one[key] == pytest.approx(at_once[key], rel=1e-5), key
        assert in_threes[key] == pytest.approx(at_once[key], rel=1e-5), key
    monkeypatch.setattr(E, "PROBE_SEQUENCES", 1)
    single = diag(64 * width)
    assert any(single[key] != pytest.approx(at_once[key], rel=1e-5)
               for key in ("entropy_norm", "support", "max_weight"))


def test_mqmtar_rows_need_their_own_query_pair():
    """Each scored row of MQMTAR that predicts a value token needs exactly the pair of that
    query: read back from the tokens, the positions hold ``k1 k2 : v1 v2`` with the query's
    key (from the query section) and the value the row's query is answered with; a row that
    predicts ``?`` or the end needs nothing."""
    from tasks.mqmtar import KV_SEP, Q_SEP

    task = tasks.get("mqmtar")
    batch = task.sample(task.rng(3, "eval"), 256, 4)
    scored = batch.targets != -100
    rows = torch.stack([row.nonzero()[:, 0] for row in scored])  # every scored row
    need = task.answer_positions(batch, rows)  # (B, R, K)
    assert need.shape == (4, rows.shape[1], task.key_len + 1 + task.value_len)
    step = task.value_len + 1
    for b in range(4):
        sep = int(rows[b, 0])
        queries = batch.tokens[b, sep - task.queries * (task.key_len + 1):sep]
        queries = queries.reshape(task.queries, task.key_len + 1)
        for r, pos in zip(rows[b].tolist(), need[b]):
            offset = r - sep
            predicted = int(batch.targets[b, r])
            if offset % step == 0:  # predicts "?" (Q_SEP) or the end
                assert (pos == -1).all() and predicted in (Q_SEP, task.specials.eos)
                continue
            i = offset // step
            pair = batch.tokens[b, pos].tolist()
            assert queries[i, 0] == Q_SEP and pair[:task.key_len] == queries[i, 1:].tolist()
            assert pair[task.key_len] == KV_SEP
            answer = batch.targets[b, sep + i * step + 1:sep + (i + 1) * step].tolist()
            assert pair[task.key_len + 1:] == answer and predicted in answer


def test_target_mass_leaves_out_rows_without_an_answer():
    """Rows whose answer positions are all -1 do not count in the target mass: uniform
    attention, rows 3 (needs keys 0, 1), 9 (needs nothing), 15 (needs key 2)."""
    model = _flat_model("softmax")
    rows = torch.tensor([[3, 9, 15]])
    targets = torch.tensor([[[0, 1], [-1, -1], [2, -1]]])
    probe = Probe(rows=rows, targets=targets)
    model.set_probe(probe)
    model(torch.randint(0, 20, (1, 16)))
    want = (2 / 4 + 1 / 16) / 2
    torch.testing.assert_close(probe.stats[0]["target_mass"].double(),
                               torch.full((2,), want, dtype=torch.float64), atol=1e-6, rtol=0)


def test_summary_weights_batches_and_reports_the_top_head():
    """Per head, the mean over probed batches weighted by their sequences; ``target_mass_top``
    is the largest per-head value over every layer; a statistic only some batches have is
    the mean of those."""
    from suite.evaluate import _summarize

    def stats(mass, scale=None):
        return [{"target_mass": torch.tensor(m), **({"scale": torch.tensor(scale)}
                                                   if scale is not None else {})}
                for m in mass]

    parts = [(stats([[0.1, 0.9], [0.2, 0.0]], [1.0, 1.0]), 3),
             (stats([[0.5, 0.1], [0.2, 0.4]]), 1)]
    out = _summarize(parts)
    heads = [[(0.1 * 3 + 0.5) / 4, (0.9 * 3 + 0.1) / 4], [0.2, 0.4 / 4]]
    for got, want in zip(out["target_mass_heads"], heads, strict=True):
        assert got == pytest.approx(want)
    assert out["target_mass"] == pytest.approx(sum(map(sum, heads)) / 4)
    assert out["target_mass_top"] == pytest.approx(0.7)
    assert out["scale"] == pytest.approx(1.0)  # from the first batch only
