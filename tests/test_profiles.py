"""The GPU profiles say what their docs say: ``repro`` and ``long`` train the paper profile's
models at its batch and peak learning rates, for fewer steps (docs/protocol.md, "Profiles")."""

import pytest

from suite import profiles as P


@pytest.mark.parametrize("task", sorted(P.get("paper").per_task))
def test_long_and_repro_cut_only_the_paper_schedule(task):
    paper_size, paper = P.get("paper").for_task(task)
    for name, steps in (("repro", P.REPRO_STEPS), ("long", min(P.LONG_STEPS, paper.steps))):
        size, b = P.get(name).for_task(task)
        assert size == paper_size, name
        assert (b.lr, b.batch_size, b.val_multiple) == (paper.lr, paper.batch_size,
                                                         paper.val_multiple), name
        assert b.steps == steps and b.warmup == steps // 10, name
        assert b.val_every == steps // 20, name
    _, long = P.get("long").for_task(task)
    assert long.ckpt_every <= long.steps // 50  # a cut cell resumes from at most 2% back
    assert long.eval_samples == 100
    assert long.max_eval_length == paper.max_eval_length  # the paper's ladder (sort: to 512)


def test_long_is_the_mqmtar_campaign_by_default():
    prof = P.get("long")
    assert prof.tasks == ("mqmtar",) and prof.seeds == 3
    assert prof.for_task("mqmtar")[1].steps == 100_000
