import math

import numpy as np
import pytest

from cnnopt.pareto import (
    RungPruner,
    ahead_of,
    crowding,
    front_mask,
    hypervolume,
    keep_count,
    nondominated_ranks,
    rungs,
    survives,
)


def test_rungs_are_successive_halvings_before_the_last_epoch():
    assert rungs(3, 2, 10) == (3, 6)
    assert rungs(1, 2, 10) == (1, 2, 4, 8)
    assert rungs(1, 3, 10) == (1, 3, 9)
    assert rungs(5, 2, 5) == ()  # a rung at the last epoch decides nothing


def test_nondominated_ranks_and_front():
    # (accuracy, flops): b dominates d; a, b, c are mutually non-dominated
    pts = [(0.90, (100.0,)), (0.80, (50.0,)), (0.70, (10.0,)), (0.75, (60.0,))]
    assert front_mask(pts) == [True, True, True, False]
    losses = np.array([[-v, *c] for v, c in pts])
    assert list(nondominated_ranks(losses)) == [0, 0, 0, 1]
    # equal points dominate nobody: both on the front
    assert front_mask([(0.5, (1.0,)), (0.5, (1.0,))]) == [True, True]


def test_crowding_extremes_are_infinite():
    d = crowding(np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 0.5], [3.0, 0.0]]))
    assert math.isinf(d[0]) and math.isinf(d[3]) and 0 < d[1] < math.inf


# A hand-made rung: six trials at epoch 3 with (accuracy, FLOPs).
RUNG = [
    (0.88, (900.0,)),  # front: most accurate
    (0.86, (300.0,)),  # front
    (0.80, (100.0,)),  # front: cheapest
    (0.85, (800.0,)),  # dominated by (0.86, 300)
    (0.70, (500.0,)),  # dominated by three
    (0.79, (120.0,)),  # dominated by (0.80, 100) only
]


@pytest.mark.parametrize("rule", ["nds", "cheaper"])
def test_the_front_of_a_rung_goes_on_and_the_clearly_dominated_stops(rule):
    for i, own in enumerate(RUNG):
        others = RUNG[:i] + RUNG[i + 1 :]
        keep = survives(own, others, reduction_factor=2, rule=rule)
        if i in (0, 1, 2):
            assert keep, (rule, own)
        if i == 4:
            assert not keep, (rule, own)


def test_nds_orders_by_front_then_crowding():
    others = RUNG[1:]
    # (0.70, 500) is in the third front: ahead of it are both better fronts (5 points)
    assert ahead_of(RUNG[4], RUNG[:4] + RUNG[5:], True, "nds") == 5
    # a front point that is an extreme of its front has nobody ahead
    assert ahead_of(RUNG[0], others, True, "nds") == 0
    # the middle front point of three: the two extremes are more isolated
    assert ahead_of(RUNG[1], [RUNG[0], RUNG[2]], True, "nds") == 2


def test_cheaper_compares_only_with_trials_that_cost_no_more():
    # (0.85, 800) has five cheaper-or-equal points, one more accurate (0.86 at 300): 1 ahead
    own, others = RUNG[3], RUNG[:3] + RUNG[4:]
    assert ahead_of(own, others, True, "cheaper") == 1
    assert survives(own, others, 2, rule="cheaper")  # 1 < 6 // 2
    # MO-ASHA's order puts the whole first front (3 points) ahead of it: 3 is not < 3
    assert ahead_of(own, others, True, "nds") == 3
    assert not survives(own, others, 2, rule="nds")
    # (0.79, 120) is behind only the single cheaper point (0.80, 100)
    assert ahead_of(RUNG[5], RUNG[:5], True, "cheaper") == 1


def test_keep_count_mirrors_successive_halving():
    assert keep_count(1, 2) == 1  # the first trial at a rung always goes on
    assert keep_count(3, 2) == 1 and keep_count(4, 2) == 2 and keep_count(9, 3) == 3


def test_minimised_metric_and_two_costs():
    # val_loss (minimised) against params and latency
    own = (0.30, (1000.0, 2.0))
    better = (0.20, (900.0, 1.0))  # dominates own
    assert not survives(own, [better], 2, maximize=False, rule="nds")
    assert not survives(own, [better], 2, maximize=False, rule="cheaper")
    assert survives(better, [own], 2, maximize=False)


def test_rung_pruner_decides_only_at_rungs():
    p = RungPruner(rungs(1, 2, 8), 2, True, "nds")
    assert [e for e in range(1, 9) if p.decides_at(e)] == [1, 2, 4]
    assert p.should_stop((0.1, (5.0,)), [(0.9, (1.0,)), (0.8, (2.0,))])
    assert not p.should_stop((0.95, (5.0,)), [(0.9, (1.0,)), (0.8, (2.0,))])


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="'best'"):
        ahead_of((0.5, (1.0,)), [(0.4, (1.0,))], True, "best")


def test_hypervolume_of_a_two_point_front():
    # maximise accuracy, minimise flops; reference (accuracy 0, flops 10)
    pts = [(0.8, (2.0,)), (0.5, (1.0,))]
    # rectangles: 0.8 x (10 - 2) plus the extra 0.5 x (2 - 1) strip
    assert hypervolume(pts, (0.0, (10.0,))) == pytest.approx(0.8 * 8 + 0.5 * 1)
    # a point beyond the reference adds nothing; no point: 0
    assert hypervolume([*pts, (0.9, (11.0,))], (0.0, (10.0,))) == pytest.approx(6.9)
    assert hypervolume([], (0.0, (10.0,))) == 0.0


# -- a stored Pareto study, made by hand (for status, export and report tests) ---------------------


def stored_pareto_study(tmp_path, name="po"):
    """A journal with a two-objective study as cnnopt stores one: (val_accuracy, flops), per-epoch
    accuracy in the ``intermediate`` user attribute, one over-budget proposal. Trials:
    #0 (0.90, 400k), #1 (0.85, 100k), #2 (0.80, 300k: dominated by #1), #3 pruned at epoch 3
    with 0.88 at 50k (no complete front point dominates it), #4 pruned at 3 with 0.5 at 500k
    (dominated), #5 over budget (never trained)."""
    import optuna
    from optuna.trial import TrialState

    from cnnopt.config import RunConfig
    from cnnopt.storage import get_storage

    url = str(tmp_path / f"{name}.journal")
    study = optuna.create_study(
        study_name=name, storage=get_storage(url), directions=["maximize", "minimize"]
    )
    settings = {"objectives": ["val_accuracy", "flops"], "max_flops": 1_000_000}
    study.set_user_attr("study_file", {"path": "po.py", "settings": settings})
    study.set_user_attr("metric", "val_accuracy")
    rows = [
        ("complete", 0.90, 400_000, 10),
        ("complete", 0.85, 100_000, 10),
        ("complete", 0.80, 300_000, 10),
        ("pruned", 0.88, 50_000, 3),
        ("pruned", 0.50, 500_000, 3),
        ("over", None, 2_000_000, 0),
    ]
    for state, acc, flops, epochs in rows:
        t = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        t.set_user_attr("flops", flops)
        t.set_user_attr("config", RunConfig().to_dict())
        t.set_user_attr("params_count", flops // 10)
        t.set_constraint("flops", flops / 1_000_000 - 1)
        if epochs:
            curve = {str(e): acc - 0.01 * (epochs - e) for e in range(1, epochs + 1)}
            t.set_user_attr("intermediate", curve)
            t.set_user_attr("history", [{"epoch": e} for e in range(1, epochs + 1)])
        if state == "complete":
            study.tell(t, [acc, flops])
        else:
            if state == "over":
                t.set_user_attr("over_budget", [f"flops {flops:,} > 1,000,000"])
            study.tell(t, state=TrialState.PRUNED)
    return study, url
