"""The Pareto replay on the committed pool: budget accounting, the same pruner as the objective,
TPE learning from what was evaluated, hypervolume bookkeeping."""

from __future__ import annotations

import pytest

from benchmarks.search import pareto_replay as P
from cnnopt.study import Study


@pytest.fixture(scope="module")
def pool():
    return P.Pool.load()


@pytest.fixture(scope="module")
def study_file():
    return Study.load(P.STUDY_FILE)


def test_the_pool_has_every_configurations_cost_and_curve(pool):
    assert len(pool.keys) == 100
    for k in pool.keys:
        assert len(pool.curves[k]) == 10 and pool.flops[k] > 0


@pytest.mark.parametrize("variant", ["random", "random+nds3", "tpe", "tpe+cheaper1"])
def test_a_replay_spends_its_budget_and_its_hypervolume_only_grows(pool, study_file, variant):
    r = P.replay(pool, variant, seed=3, budget=40, study_file=study_file)
    assert r.epochs == 40
    hv = [h for _, h in r.curve]
    assert hv == sorted(hv) and r.hv_at(40) == (hv[-1] if hv else 0.0)
    # complete trials trained 10 epochs each; pruned ones stopped at a rung, one cut by the budget
    assert len(r.curve) + r.pruned <= r.trials <= len(r.curve) + r.pruned + 1
    if "+" not in variant:
        assert r.pruned == 0 and len(r.curve) == 4
    # every front point is a pooled (final accuracy, FLOPs) pair
    finals = {(pool.curves[k][-1], pool.flops[k]) for k in pool.keys}
    assert set(r.front) <= finals


def test_replays_are_paired_by_seed(pool, study_file):
    a = P.replay(pool, "tpe+nds3", 5, 30, study_file)
    b = P.replay(pool, "tpe+nds3", 5, 30, study_file)
    assert a.curve == b.curve  # a seed decides everything
    # random search with and without pruning play the same order: the first trial, alone at
    # every rung, is never pruned, so both complete the same configuration first
    r0 = P.replay(pool, "random", 5, 10, study_file)
    r1 = P.replay(pool, "random+nds1", 5, 10, study_file)
    assert r0.curve == r1.curve and len(r0.curve) == 1 and r0.curve[0][1] > 0


def test_budget_replay_records_over_budget_proposals_as_the_objective_does(pool, study_file):
    over = P.budget_replay(
        pool, "tpe", seed=1, n_trials=8, max_params=100_000, study_file=study_file
    )
    assert len(over) == 8 and any(over)  # half the pool is over 100k: the first eight meet some
    blind = P.budget_replay(pool, "tpe-blind", 1, 5, 100_000, study_file)
    assert blind == over[:5]  # the startup trials are random either way: same proposals


def test_summary_table_and_figure_of_a_small_comparison():
    res = P.run(["tpe+nds3", "tpe", "random"], [7, 8], budget=30, log=lambda m: None)
    table = P.summarize(res, 30, base="tpe")
    assert "diff@25" in table["random"] and "diff@25" not in table["tpe"]
    hv = [r.hv_at(25) for r in res["random"]]
    assert table["random"]["hv@25"]["mean"] == pytest.approx(sum(hv) / 2)
    data = {
        "budget": 30,
        "table": table,
        "report_seeds": [7, 8],
        "curves": {
            v: [{"seed": r.seed, "curve": r.curve, "front": r.front} for r in reps]
            for v, reps in res.items()
        },
    }
    md = P.markdown(data)
    assert md.count("\n") == 4 and "(baseline)" in md
    fig = P.figure(data)
    assert len(fig.data) == 3 * 3  # per variant: band, mean, front
