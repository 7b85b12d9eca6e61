"""Live Pareto studies' bookkeeping on hand-made trials (no training): the budget cut, the replay's
hypervolume, pairing by seed, the summary's interval and a resumable run."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.search import pareto_live as P
from benchmarks.search import pareto_replay

HW = {"cpu": "Some CPU", "torch_threads": 2}
FIRST = [0.6, 0.7, 0.8]  # both variants' first trial: the same startup draw, never pruned


def trial(values, flops, state="COMPLETE", key=None, duplicate_of=None, hardware=HW):
    return {"values": values, "state": state, "flops": flops, "duplicate_of": duplicate_of,
            "seconds": [1.0] * len(values), "params": {"k": key or f"{values}-{flops}"},
            "hardware": dict(hardware) if hardware else {}}  # fmt: skip


def record(variant, seed, trials):
    return {"variant": variant, "seed": seed, "trials": trials}


def hv(points):
    return pareto_replay.hypervolume(
        [(a, (math.log10(f),)) for a, f in points], pareto_replay.REFERENCE
    )


def test_only_trials_completed_within_the_budget_count_and_a_copy_costs_nothing():
    rec = record("pruned", 1, [
        trial(FIRST, 10**7),                              # epochs 1-3, complete
        trial([0.5], 10**6, state="PRUNED"),              # epoch 4, pruned at the first rung
        trial(FIRST, 10**7, duplicate_of=0, key="same"),  # a copy: no epoch, same point
        trial([0.7, 0.75, 0.9], 2 * 10**6),               # epochs 5-7, complete
        trial([0.8, 0.85, 0.95], 10**6, state="FAIL"),    # epochs 8-10: the budget (9) cuts it
    ])  # fmt: skip
    assert P.completed(rec, 9, 3) == [(0.8, 10**7), (0.8, 10**7), (0.9, 2 * 10**6)]
    sc = P.score(rec, 9, 3)
    assert (sc["trials"], sc["pruned"], sc["complete"], sc["copies"], sc["epochs"]) == (
        5,
        1,
        3,
        1,
        9,
    )
    assert sc["hv"] == pytest.approx(hv([(0.9, 2 * 10**6)]))  # it dominates (0.8, 10^7)
    assert sc["hv_half"] == pytest.approx(hv([(0.8, 10**7)]))  # 4 epochs: the first trial only
    # a trial interrupted after its last epoch (FAIL: the run stopped at the budget) trained in
    # full
    assert P.completed(rec, 10, 3)[-1] == (0.95, 10**6)


def test_the_hypervolume_is_the_replays_and_nothing_is_zero():
    assert P.hv([]) == 0.0
    assert P.hv([(0.45, 10**6)]) == 0.0  # below the reference accuracy 0.5
    assert P.hv([(0.9, 10**9)]) == 0.0  # above the reference's 10^8.3 FLOPs
    # one point: (accuracy - 0.5) x (8.3 - log10 FLOPs)
    assert P.hv([(0.9, 10**6)]) == pytest.approx(0.4 * 2.3)
    pts = [(0.9, 10**7), (0.8, 10**6), (0.7, 10**8)]
    assert P.hv(pts) == pytest.approx(hv(pts))


def test_a_pair_is_clean_on_the_same_hardware_and_the_same_first_curve():
    a = record("pruned", 1, [trial(FIRST, 10**7)])
    b = record("unpruned", 1, [trial(FIRST, 10**7), trial([0.6, 0.7, 0.9], 10**6)])
    assert P.pair_fault(a, b) == ""
    c = record("unpruned", 1, [trial([0.6, 0.7, 0.81], 10**7)])
    assert "first trials differ" in P.pair_fault(a, c)
    d = record("unpruned", 1, [trial(FIRST, 10**7, hardware={**HW, "torch_threads": 1})])
    assert "hardware differs" in P.pair_fault(a, d)
    e = record("unpruned", 1, [trial(FIRST, 10**7, hardware=None)])
    assert "hardware not recorded (unpruned)" in P.pair_fault(a, e)


def _table(pairs):
    """A table of seeds whose pruned study adds a cheap accurate trial (or not) to the shared first."""
    studies = {}
    for seed, extra_pruned, extra_unpruned in pairs:
        studies[f"pruned/{seed}"] = record("pruned", seed, [trial(FIRST, 10**7), *extra_pruned])
        studies[f"unpruned/{seed}"] = record(
            "unpruned", seed, [trial(FIRST, 10**7), *extra_unpruned]
        )
    return {"meta": {"budget": 7, "epochs": 3, "study_file": P.STUDY_FILE, "train_subset": 100},
            "studies": studies}  # fmt: skip


def test_the_summary_pairs_seeds_and_says_when_the_interval_includes_zero():
    better = [trial([0.5], 10**8, state="PRUNED"), trial([0.7, 0.8, 0.9], 10**6)]
    worse = [trial([0.6, 0.7, 0.75], 10**6)]
    table = _table([(s, better, worse) for s in (1, 2, 3)])
    s = P.summarize(table)
    gain = hv([(0.9, 10**6)]) - hv([(0.8, 10**7), (0.75, 10**6)])
    assert s["clean_pairs"] == 3
    assert [r["diff"] for r in s["per_seed"].values()] == pytest.approx([gain] * 3)
    assert s["diff"]["mean"] == pytest.approx(gain) and s["diff"]["ahead"] == 3
    assert s["verdict"].startswith("pruned ahead")
    # opposite signs: the t interval includes zero
    mixed = _table([(1, better, worse), (2, worse, better), (3, better, worse), (4, worse, better)])
    s = P.summarize(mixed)
    assert s["diff"]["t_low"] < 0 < s["diff"]["t_high"]
    assert (s["diff"]["ahead"], s["diff"]["behind"]) == (2, 2)
    assert s["verdict"].startswith("no measurable difference")
    # a seed with one variant only, or an unclean pair, is left out of the interval
    mixed["studies"].pop("unpruned/4")
    mixed["studies"]["unpruned/3"]["trials"][0]["values"] = [0.6, 0.7, 0.81]
    s = P.summarize(mixed)
    assert s["clean_pairs"] == 2 and "diff" not in s["per_seed"]["4"]
    assert s["per_seed"]["3"]["fault"] == "first trials differ"
    table["summary"] = P.summarize(table)
    md = P.markdown(table)
    assert "pruned ahead in 3, level in 0, behind in 0" in md and md.count("| clean |") == 3


def test_a_run_writes_after_each_study_and_resumes_with_the_next(tmp_path):
    out = tmp_path / "t.json"
    calls = []

    def fake(variant, seed, *, variant_sets, budget, epochs, **kw):
        calls.append((variant, seed))
        assert variant_sets == P.VARIANTS[variant] and kw["study_file"] == P.STUDY_FILE
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is stopped in its third study
        extra = [trial([0.7, 0.8, 0.9], 10**6)] if variant == "pruned" else []
        return [trial(FIRST, 10**7), *extra]

    kw = dict(seeds=[7, 8], budget=6, epochs=3, train_subset=100, workdir=tmp_path, runner=fake)
    with pytest.raises(KeyboardInterrupt):
        P.run(out, **kw)
    held = json.loads(out.read_text())
    assert sorted(held["studies"]) == ["pruned/7", "unpruned/7"]
    assert held["studies"]["pruned/7"]["hardware"] == HW
    assert held["summary"]["per_seed"]["7"]["fault"] == ""
    assert "--set pruner=none" in held["meta"]["cnnopt_commands"]["unpruned"]
    table = P.run(out, **kw)
    assert calls == [("pruned", 7), ("unpruned", 7), ("pruned", 8), ("pruned", 8), ("unpruned", 8)]
    assert table["summary"]["clean_pairs"] == 2
    with pytest.raises(SystemExit, match="holds studies"):
        P.run(out, **{**kw, "budget": 9})
