"""The search benchmark on tiny synthetic tables: budget accounting, deduplication, pruner
semantics as Optuna's own, the bootstrap interval, the tabulation's resume; and the `cnnopt bench`
adapter on the committed table."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from benchmarks.search import replay as R
from benchmarks.search import stats, tabulate

GRID = {"batch_size": (32, 64), "lr": (1e-3, 1e-2), "l1": (64, 128)}  # 8 configurations


def synth_table(grid=GRID, epochs=10, seeds=(0, 1, 2)) -> dict:
    """Curves that rise to a per-configuration ceiling at a per-configuration rate; the training
    seed shifts the curve slightly, so a repeat on another seed is distinguishable."""
    runs = {}
    for i, c in enumerate(tabulate.grid_configs(grid)):
        for s in seeds:
            top, rate = 0.80 + 0.01 * i + 0.001 * s, 0.2 + 0.3 * (i % 3)
            runs[tabulate.run_key(c, s)] = {
                "config": c,
                "seed": s,
                "epochs": [
                    {
                        "epoch": e,
                        "val_accuracy": top * (1 - math.exp(-rate * e)),
                        "val_loss": 1 / e,
                        "train_loss": 1 / e,
                        "seconds": c["batch_size"] / 32,
                    }
                    for e in range(1, epochs + 1)
                ],
            }
    meta = {"grid": {k: list(v) for k, v in grid.items()}, "epochs": epochs, "seeds": list(seeds)}
    return {"meta": meta, "runs": runs}


@pytest.fixture
def table() -> R.Table:
    return R.Table(synth_table())


def test_no_pruning_without_dedup_spends_the_whole_budget_on_full_trials(table):
    r = R.replay(table, R.Variant("random", "none", dedup=False), seed=0, budget=120)
    assert (r.trials, r.epochs, r.pruned) == (12, 120, 0)
    assert r.trace[-1][0] == 120 and r.trace[0][0] == 10
    # 12 draws from 8 configurations repeat at least 4 times, each costing its 10 epochs
    assert r.duplicates >= 4 and r.duplicate_epochs == 10 * r.duplicates
    assert r.seconds > r.epochs * 0.99  # tabulated seconds (1 or 2 per epoch here) add up


def test_a_trial_cut_by_the_budget_never_completes(table):
    r = R.replay(table, R.Variant("random", "none", dedup=False), seed=0, budget=25)
    assert r.epochs == 25 and r.trials == 3
    assert len([e for e, _s, _b in r.trace]) == 3
    assert r.best == max(r.best_at(20), r.best)  # the third trial (5 epochs) adds nothing
    assert r.best_at(20) == r.best


def test_dedup_never_trains_a_configuration_twice_and_stops_when_the_grid_is_exhausted(table):
    for seed in range(5):
        r = R.replay(table, R.Variant("random", "none", dedup=True), seed=seed, budget=120)
        assert r.duplicate_epochs == 0
        assert r.exhausted and r.epochs == 80  # 8 configurations x 10 epochs, budget left over
        assert r.best == pytest.approx(max(table.final(k, seed % 3) for k in table.curves))


CONFIG = {"batch_size": 32, "lr": 1e-3, "l1": 64}


def test_every_variant_replays_identically_with_the_same_seed(table):
    """Replays are evidence only if rerunning them gives the same figures: HyperbandPruner
    brackets trials by a hash of the study name, so the replay's study name must not be random."""
    for pruner in R.PRUNERS:
        v = R.Variant("tpe", pruner, dedup=True)
        a, b = (R.replay(table, v, seed=4, budget=60) for _ in range(2))
        assert a.log == b.log and a.best == b.best, pruner


@pytest.fixture
def always_same(monkeypatch):
    """A sampler that proposes the same configuration every time (what TPE does too often)."""

    class Same(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, dist):
            return CONFIG[name]

    monkeypatch.setattr(R, "make_sampler", lambda name, seed: Same(seed=seed))


def test_without_dedup_a_repeat_trains_with_the_next_training_seed(table, always_same):
    r = R.replay(table, R.Variant("random", "none", dedup=False), seed=1, budget=30)
    key = tabulate.config_key(CONFIG)
    assert (r.trials, r.epochs, r.duplicates, r.duplicate_epochs) == (3, 30, 2, 20)
    # seeds 1, 2, 0 in turn: the best so far follows seed 1's value, then seed 2's (higher)
    assert [b for _e, _s, b in r.trace] == [
        table.final(key, 1),
        table.final(key, 2),
        table.final(key, 2),
    ]


def test_dedup_reuses_the_earlier_outcome_at_no_cost(table, always_same):
    """The first trial trains; every later one copies it (same value, no epochs)."""
    r = R.replay(table, R.Variant("random", "none", dedup=True), seed=0, budget=30)
    assert r.trials == R.MAX_TRIALS and r.epochs == 10 and r.duplicate_epochs == 0
    assert r.duplicates == R.MAX_TRIALS - 1
    assert r.best == table.final(tabulate.config_key(CONFIG), 0)


class _PruneAt(optuna.pruners.BasePruner):
    def __init__(self, step: int):
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


def test_dedup_copies_a_pruned_outcome_as_pruned(table, always_same, monkeypatch):
    """A configuration pruned once is pruned again at the same step when proposed again."""
    monkeypatch.setitem(R.PRUNERS, "always", lambda epochs: _PruneAt(3))
    r = R.replay(table, R.Variant("random", "always", dedup=True), seed=0, budget=30)
    assert r.epochs == 3 and r.pruned == r.trials == R.MAX_TRIALS and r.best == -math.inf


def test_pruned_replay_matches_optuna_on_the_same_curves(table):
    """The replay's pruning decisions are Optuna's own: a plain study that reports the same
    curves through study.optimize prunes the same trials at the same steps."""
    v = R.Variant("random", "sh1", dedup=False)
    r = R.replay(table, v, seed=3, budget=400)  # compare trial by trial
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=3),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    )
    trained: dict[str, int] = {}

    def objective(trial):
        key = tabulate.config_key(R._suggest(trial, table.grid))
        n = trained.get(key, 0)
        trained[key] = n + 1
        curve = table.curves[key][table.seeds[(0 + n) % 3]]
        for step, v in enumerate(curve, 1):
            trial.report(v, step)
            if step < table.epochs and trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    study.optimize(objective, n_trials=r.trials)
    optuna_log = [
        (tabulate.config_key(t.params), t.state.name, len(t.intermediate_values))
        for t in study.trials
    ]
    assert r.log[-1][1] == "FAIL"  # the last trial was cut by the budget, Optuna's went on
    assert r.log[:-1] == optuna_log[:-1]
    assert r.pruned == sum(s == "PRUNED" for _k, s, _n in r.log) > 10
    assert r.epochs == sum(n for _k, _s, n in r.log) == 400


def test_epochs_to_target_and_anytime_lookups(table):
    r = R.replay(table, R.Variant("random", "none", dedup=False), seed=0, budget=120)
    assert r.epochs_to(-1.0) == 10
    assert r.epochs_to(2.0) == math.inf
    assert r.best_at(9) == -math.inf and r.best_at(10) > 0
    assert r.best_at(120) == r.best
    assert r.best_at_seconds(r.seconds) == r.best


def test_bootstrap_interval_covers_the_mean_and_detects_a_shift():
    ci = stats.bootstrap_mean([0.01] * 50 + [0.03] * 50)
    assert ci.low < 0.02 < ci.high and ci.mean == pytest.approx(0.02) and ci.excludes_zero()
    noise = stats.paired([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert noise.mean == 0 and not noise.excludes_zero()
    with pytest.raises(ValueError, match="length"):
        stats.paired([1, 2], [1])
    assert stats.choose({"a": [0.8, 0.9], "b": [0.85, 0.85]}, {"a": [10, 10], "b": [5, 5]}) == "b"


def test_t_interval_is_wider_than_the_bootstrap_with_a_handful_of_seeds():
    ci = stats.t_mean([1, 2, 3, 4, 5])  # mean 3, s = 1.5811, t(4) = 2.776
    assert (ci.mean, ci.n) == (3, 5) and ci.low == pytest.approx(1.0374, abs=1e-3)
    assert ci.high == pytest.approx(4.9626, abs=1e-3)
    # five paired differences all of one sign: the percentile bootstrap excludes zero, t does not
    d = [0.0443, 0.0010, 0.0053, 0.0287, 0.0157]
    assert stats.bootstrap_mean(d).excludes_zero() and not stats.t_mean(d).excludes_zero()
    # past the table, the expansion meets the known quantiles
    assert stats.t_quantile(31) == pytest.approx(2.040, abs=1e-3)
    assert stats.t_quantile(120) == pytest.approx(1.980, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2 values, got 1"):
        stats.t_mean([0.5])


def test_tabulation_resumes_and_skips_what_the_table_has(tmp_path):
    out = tmp_path / "t.json"
    grid = {"batch_size": (64,), "lr": (1e-3, 1e-2), "l1": (16,)}
    kw = dict(dataset="synthetic", epochs=2, train_subset=None, grid=grid, command="cmd")
    logs: list[str] = []
    tabulate.tabulate(out, seeds=(0, 1), limit=3, log=logs.append, **kw)
    first = json.loads(out.read_text())
    assert len(first["runs"]) == 3 and first["meta"]["command"] == "cmd"
    assert all(len(r["epochs"]) == 2 for r in first["runs"].values())
    # seed-major: the first seed's grid is complete before the second seed starts
    assert {r["seed"] for r in first["runs"].values()} == {0, 1}
    assert sum(r["seed"] == 0 for r in first["runs"].values()) == 2
    tabulate.tabulate(out, seeds=(0, 1), log=logs.append, **kw)
    second = json.loads(out.read_text())
    assert logs[-2].startswith("1 runs to train (3 already")
    for k, run in first["runs"].items():  # kept, not retrained
        assert second["runs"][k] == run
    assert len(second["runs"]) == 4
    t = R.Table(second)
    assert t.seeds == [0, 1] and t.n_configs == 2


def test_ray_results_are_cut_at_the_budget_like_a_replay():
    """Ray's results (in arrival order) become a Replay with the same accounting: a trial
    stopped early is pruned, a repeat costs its epochs, the trial the budget cuts never completes."""
    from benchmarks.search.ray_asha import _to_replay

    def rows(trial, key, accs):
        return [(trial, {"config_key": key, "val_accuracy": a, "seconds": 2.0}) for a in accs]

    results = (
        rows("t0", "a", [0.5 + 0.01 * e for e in range(10)])  # complete: 0.59
        + rows("t1", "b", [0.3])  # stopped by ASHA after one epoch
        + rows("t2", "a", [0.6 + 0.01 * e for e in range(10)])  # a repeat, complete: 0.69
        + rows("t3", "c", [0.9] * 4)  # cut by the budget
    )
    r = _to_replay(results, seed=0, budget=25, epochs=10)
    assert [s for _k, s, _n in r.log] == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
    assert (r.epochs, r.seconds, r.pruned, r.duplicates, r.duplicate_epochs) == (25, 50.0, 1, 1, 10)
    assert r.best == pytest.approx(0.69) and r.best_key == "a"
    assert r.epochs_to(0.6) == 21


@pytest.mark.slow  # starts Ray twice: ~40 s on a busy 2-core CPU
def test_both_ray_searchers_replay_the_table_and_each_is_a_baseline(tmp_path):
    """Ray Tune's random search and its OptunaSearch(TPESampler), each under the same ASHA, on
    the same fresh seeds: two rows, and every variant is paired against both."""
    pytest.importorskip("ray.tune")
    from benchmarks.search import ray_asha, section

    path = tmp_path / "table.json"
    path.write_text(json.dumps(synth_table()))
    rows, d = section.bench_search(
        path, seeds=3, ray_seeds=2, quick=True, log=lambda m: None, pool_path=None,
        live_path=None,
    )  # fmt: skip
    s = d["summary"]
    for name in ray_asha.NAMES.values():
        assert s[name]["seeds"] == 2 and s[name]["epochs_mean"] == 120  # the budget, spent
    chosen = s[d["chosen"]]["vs"]
    assert chosen[section.BASELINE_RAY]["best"]["n"] == 2
    assert chosen[section.BASELINE_RAY_TPE]["best"]["n"] == 2
    assert "| vs Ray random+ASHA | vs Ray TPE+ASHA |" in d["markdown"]
    with pytest.raises(ValueError, match="unknown Ray searcher 'hyperopt'"):
        ray_asha.run_asha(synth_table(), [0], searcher="hyperopt")


def test_search_section_rows_choice_and_outputs(tmp_path):
    from benchmarks.search import section

    path = tmp_path / "table.json"
    path.write_text(json.dumps(synth_table()))
    rows, d = section.bench_search(
        path, seeds=2, ray_seeds=0, quick=True, out_dir=tmp_path / "out", log=lambda m: None,
        pool_path=tmp_path / "no_pool.json",
    )  # fmt: skip
    fields = {"section", "name", "value", "unit", "baseline", "baseline_value", "ratio", "better"}
    assert all(fields | {"note", "extra"} <= set(r) for r in rows)
    assert d["chosen"] in {v.name for v in section.CANDIDATES}
    assert d["choose_seeds"] == [0, 1] and d["fresh_seeds"] == [2, 3]
    assert d["choose_train_seeds"] == [0] and d["fresh_train_seeds"] == [1, 2]
    assert "SMOKE RUN" in d["markdown"] and "SMOKE RUN" in rows[0]["note"]
    for name in ("search.md", "search.json", "search.html"):
        assert (tmp_path / "out" / name).stat().st_size > 100
    dedup = [r for r in rows if r["name"].split(": ")[1].split(" ")[0].endswith("+dedup")]
    assert dedup and all(r["extra"]["duplicate_epochs_mean"] == 0 for r in dedup)
    # no pool table: one line says so, the grid part stands alone
    assert not (tmp_path / "out" / "search_pool.html").exists()
    assert not any(r["name"].startswith("pool:") for r in rows)
    missing = [line for line in d["markdown"].splitlines() if "random pool" in line]
    assert len(missing) == 1 and "no table at" in missing[0] and "no_pool.json" in missing[0]


def test_bench_payload_sets_the_headline_and_writes_beside_the_report(tmp_path, monkeypatch):
    """What ``cnnopt bench --section search`` reads back (``--bench-json``): the seeds it is
    given, the chosen default's paired difference as the report headline, search.* in the out
    folder, the pool part where its table is."""
    from benchmarks.search import section

    pool_path = tmp_path / "pool.json"
    pool_path.write_text(json.dumps(synth_pool()))
    monkeypatch.setattr(section, "POOL_TABLE", pool_path)

    logs: list[str] = []
    p = section.bench_payload(seeds=2, ray_seeds=0, smoke=True, out_dir=tmp_path, log=logs.append)
    rows, plan, notes = p["rows"], p["plan"], p["notes"]
    assert {r["section"] for r in rows} == {"search"}
    assert all(r["unit"] == "accuracy" for r in rows)
    assert plan["fresh_seeds"] == [2, 3]
    assert p["search_default"] == plan["chosen"]
    assert p["search_best_val_diff_vs_random"]["n"] == 2
    assert p["search_best_val_diff_vs_ray_asha"] is None  # no Ray seeds
    assert any("SMOKE RUN" in m for m in logs) and any("SMOKE RUN" in n for n in notes)
    assert str(tmp_path / "search.html") in notes[0]
    assert (tmp_path / "search.html").stat().st_size > 100
    assert plan["pool"]["configs"] == 8  # the plan's copy, without the summary
    assert "summary" not in plan["pool"]
    assert sum(r["name"].startswith("pool:") for r in rows) == len(R.PRUNERS)
    assert any("search_pool.html" in n and "provisional" in n for n in notes)
    json.dumps(p)  # it crosses a process boundary as JSON


# -- the random pool -----------------------------------------------------------------------------

POOL_BAD = {2, 5, 7}  # pool indices whose curves stay near chance: any pruner should stop them


def synth_pool(n: int = 8, epochs: int = 4, size: int = 10, unfinished: bool = True) -> dict:
    """A hand-made pool table as pool.py writes it: ``n`` configurations in sampling order (of a
    planned ``size``), one training seed; good curves rise towards 0.85..0.92, bad ones stay near
    0.1; an epoch of configuration i costs i + 1 seconds (the median of 3 raw values). With
    ``unfinished``, one more pooled configuration has only half its epochs (still training)."""
    configs = [{"lr": 10.0 ** -(1 + i % 4), "width": 16 * (i + 1)} for i in range(n + 1)]
    runs = {}
    for i, c in enumerate(configs):
        if i == n and not unfinished:
            break
        if i in POOL_BAD:
            accs = [0.10 + 0.001 * e for e in range(1, epochs + 1)]
        else:
            top = 0.85 + 0.01 * i  # reached at the last epoch
            accs = [top - 0.4 * (epochs - e) / epochs for e in range(1, epochs + 1)]
        raw_seconds = [i + 1, 100.0, i + 1, 0.5] * epochs  # an outlier or two: the median holds
        runs[tabulate.run_key(c, 0)] = {
            "config": c,
            "seed": 0,
            "index": i,
            "params": 1000 * (i + 1),
            "flops": 1e6,
            "epochs": [
                {"epoch": e, "val_accuracy": a, "val_loss": 1.0, "train_loss": 1.0,
                 "seconds": raw_seconds[e - 1]}
                for e, a in enumerate(accs[: epochs if i < n else epochs // 2], 1)
            ],
        }  # fmt: skip
    meta = {
        "kind": "pool", "pool": [tabulate.config_key(c) for c in configs], "epochs": epochs,
        "seeds": [0], "size": size, "study_file": "studies/tiny.py",
    }  # fmt: skip
    return {"meta": meta, "runs": runs}


@pytest.fixture
def pool():
    from benchmarks.search.pool_replay import PoolTable

    return PoolTable(synth_pool())


def test_pool_table_keeps_finished_runs_in_pool_order(pool):
    from benchmarks.search.pool_replay import PoolTable

    data = synth_pool()
    assert pool.n_configs == 8 and not pool.complete  # 8 of 10 planned; the 9th still training
    assert pool.order == data["meta"]["pool"][:8]
    assert pool.seconds[pool.order[3]] == 4  # median epoch seconds, not the 100 s outlier
    assert pool.ceiling() == pytest.approx(0.85 + 0.06)  # pool #6: #7 is a bad one
    assert sum(f >= pool.target() for f in pool.finals()) == 1  # 90th percentile of 8
    assert PoolTable(synth_pool(size=8, unfinished=False)).complete
    data["meta"]["kind"] = "grid"
    with pytest.raises(ValueError, match=r"^pool\.json: meta\.kind is 'grid', not 'pool'$"):
        PoolTable(data, source="pool.json")
    data["meta"] = {"kind": "pool", "pool": []}
    with pytest.raises(ValueError, match=r"^pool\.json: meta\.epochs is missing$"):
        PoolTable(data, source="pool.json")


def test_search_section_skips_an_unusable_pool_in_one_line(tmp_path):
    """A pool table whose first run is still training: the grid part stands, one line says why."""
    from benchmarks.search import section

    grid_path, pool_path = tmp_path / "grid.json", tmp_path / "pool.json"
    grid_path.write_text(json.dumps(synth_table()))
    data = synth_pool(n=0)  # only the unfinished configuration
    pool_path.write_text(json.dumps(data))
    rows, d = section.bench_search(
        grid_path, seeds=2, ray_seeds=0, quick=True, log=lambda m: None, pool_path=pool_path,
        live_path=None,
    )  # fmt: skip
    assert rows and not any(r["name"].startswith("pool:") for r in rows)
    assert d["pool"]["note"] == (
        f"random pool: {pool_path}: no pooled configuration has all 4 epochs for training seed 0; "
        "the pool part is skipped"
    )
    assert d["markdown"].rstrip().endswith(d["pool"]["note"])


def test_pool_replay_spends_the_budget_and_cuts_the_last_trial(pool):
    from benchmarks.search.pool_replay import replay_pool

    r = replay_pool(pool, "none", order_seed=0, budget=10)
    assert (r.trials, r.epochs, r.pruned) == (3, 10, 0)
    assert [s for _k, s, _n in r.log] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert [n for _k, _s, n in r.log] == [4, 4, 2]
    assert r.best == max(pool.curves[k][-1] for k, _s, _n in r.log[:2])  # the cut trial: nothing
    secs = [pool.seconds[k] for k, _s, _n in r.log]
    assert r.seconds == pytest.approx(4 * secs[0] + 4 * secs[1] + 2 * secs[2])
    # a big budget: every configuration is tried once, then the study stops
    big = replay_pool(pool, "none", order_seed=0, budget=120)
    assert big.exhausted and big.epochs == 32 and big.trials == 8
    assert big.best == pool.ceiling()


def test_pool_replay_is_deterministic_and_paired_per_order_seed(pool):
    """The same order seed gives the same study; every pruner plays the same permutation (so the
    differences between pruners are paired), and other seeds play other permutations."""
    from benchmarks.search.pool_replay import replay_pool

    for pruner in R.PRUNERS:
        a, b = (replay_pool(pool, pruner, order_seed=3, budget=20) for _ in range(2))
        assert a.log == b.log and a.trace == b.trace, pruner
        keys = [k for k, _s, _n in a.log]
        assert keys == pool.permutation(3)[: len(keys)], pruner
    assert len({tuple(pool.permutation(s)) for s in range(10)}) > 5


def test_pool_pruned_trials_stop_early_and_cost_only_their_epochs(pool):
    from benchmarks.search.pool_replay import ASHA_LIKE, DEFAULT_PRUNER, replay_pool

    bad = {pool.order[i] for i in POOL_BAD}
    for seed in range(6):
        for pruner in (ASHA_LIKE, DEFAULT_PRUNER):
            r = replay_pool(pool, pruner, order_seed=seed, budget=120)
            assert r.exhausted and r.epochs == sum(n for _k, _s, n in r.log) < 32
            assert all(n < pool.epochs for _k, s, n in r.log if s == "PRUNED")
            assert r.pruned == sum(s == "PRUNED" for _k, s, _n in r.log) >= 2
            # At the first rung every earlier trial competes (pruned ones too) and the top half
            # goes on: a bad curve is pruned there once good trials are at least as many as
            # the bad ones (itself included).
            good_before = bad_so_far = 0
            for k, s, _n in r.log:
                if k in bad:
                    bad_so_far += 1
                    if good_before >= bad_so_far:
                        assert s == "PRUNED", (pruner, seed, r.log)
                else:
                    good_before += 1
            if pruner == DEFAULT_PRUNER:  # first rung at epoch 3: bad curves stop there
                assert {n for k, s, n in r.log if k in bad and s == "PRUNED"} == {3}
            # the trace's best never counts a pruned trial's value
            assert r.best in {pool.curves[k][-1] for k, s, _n in r.log if s == "COMPLETE"}


def test_search_section_reports_the_pool_beside_the_real_grid(tmp_path):
    """--quick on the committed grid and a tiny, incomplete pool: the pool part's rows, paired
    comparisons of the default pruner, its figure, and the provisional warning everywhere."""
    from benchmarks.search import section
    from benchmarks.search.pool_replay import DEFAULT_PRUNER

    pool_path = tmp_path / "pool.json"
    pool_path.write_text(json.dumps(synth_pool()))
    out = tmp_path / "out"
    rows, d = section.bench_search(
        section.TABLE, seeds=2, ray_seeds=0, quick=True, out_dir=out, log=lambda m: None,
        pool_path=pool_path,
    )  # fmt: skip
    p = d["pool"]
    assert (p["configs"], p["size"], p["complete"]) == (8, 10, False)
    assert p["choose_seeds"] == [0, 1] and p["fresh_seeds"] == [2, 3]
    assert p["default"] == f"random+{DEFAULT_PRUNER}" and p["chosen"] in p["summary"]
    assert p["ceiling"] == pytest.approx(0.91) and p["reaching_target"] == 1
    default = p["summary"][p["default"]]
    assert set(default["vs"]) == set(section.POOL_BASELINES)
    assert default["vs"]["no pruning"]["best"]["n"] == 2
    assert default["pruned_mean"] > 0 and p["summary"]["random+none"]["pruned_mean"] == 0
    pool_rows = [r for r in rows if r["name"].startswith("pool:")]
    assert len(pool_rows) == len(R.PRUNERS)
    assert all("provisional" in r["note"] and "SMOKE RUN" in r["note"] for r in pool_rows)
    assert sum("(cnnopt default" in r["name"] for r in pool_rows) == 1
    md = d["markdown"]
    assert "### Random pool" in md and "Incomplete pool: 8 of 10 configurations" in md
    assert "90th-percentile" in md and "cnnopt's default pruner (random+sh3): vs no pruning" in md
    assert md.count("SMOKE RUN") >= 2  # the grid's and the pool's part
    assert (out / "search_pool.html").stat().st_size > 100
    assert json.loads((out / "search.json").read_text())["pool"]["configs"] == 8


POOL_STUDY = """
name = "pool_tiny"
dataset = "synthetic"
family = "cnn"
conv_blocks = 2
filters = [4, 8]
hidden = []
global_pool = True
epochs = 2


def space(trial):
    return {"batch_size": trial.suggest_categorical("batch_size", [64, 128])}
"""


def test_sample_pool_is_seeded_and_draws_distinct_configurations():
    """Sampling only (no training, no data): the real study's space, deterministic in the pool
    seed, every configuration once."""
    from benchmarks.search import pool
    from cnnopt.dedup import config_hash

    study = pool.load_study(pool.STUDY_FILE, epochs=10, train_subset=15000)
    a, b = (pool.sample_pool(study, 6, pool_seed=0) for _ in range(2))
    assert a == b and len(a) == 6
    assert len({config_hash(study.config_from_params(p)) for p in a}) == 6
    assert pool.sample_pool(study, 6, pool_seed=1) != a
    assert pool.sample_pool(study, 3, pool_seed=0) == a[:3]  # a smaller pool is a prefix


def test_tabulate_pool_writes_runs_in_pool_order_and_resumes_without_retraining(
    tmp_path, write_study
):
    from benchmarks.search import pool
    from benchmarks.search.pool_replay import PoolTable

    study_file = write_study(POOL_STUDY)
    out = tmp_path / "pool.json"
    kw = dict(study_file=study_file, size=3, epochs=2, train_subset=None, command="cmd")
    logs: list[str] = []
    first = pool.tabulate_pool(out, limit=1, log=logs.append, **kw)
    # a 2-value space: the pool has the 2 configurations there are, not 3
    assert len(first["meta"]["pool"]) == 2 and first["meta"]["kind"] == "pool"
    assert len(first["runs"]) == 1 and first["meta"]["command"] == "cmd"
    (run,) = first["runs"].values()
    assert run["index"] == 0 and tabulate.config_key(run["config"]) == first["meta"]["pool"][0]
    assert len(run["epochs"]) == 2 and run["params"] > 0
    t = PoolTable.load(out)
    assert t.n_configs == 1 and not t.complete  # the first run alone: a smaller pool
    pool.tabulate_pool(out, log=logs.append, **kw)
    assert logs[-2].startswith("1 runs to train (1 already")
    second = json.loads(out.read_text())
    assert second["runs"][tabulate.run_key(run["config"], 0)] == run  # kept, not retrained
    assert len(second["runs"]) == 2
    pool.tabulate_pool(out, log=logs.append, **kw)
    assert logs[-1].startswith("0 runs to train (2 already")
    assert json.loads(out.read_text())["runs"] == second["runs"]
    assert PoolTable.load(out).order == second["meta"]["pool"]


def test_warm_starts_play_first_are_never_pruned_and_still_enter_the_rungs(tmp_path):
    """The study file's warm starts, tabulated beside the pool: the +warm replay trains them to the
    end before the permutation (a slow starter that epoch-1 rungs would cut), and later trials
    are compared with their rung values."""
    from benchmarks.search.pool_replay import PoolTable, replay_pool

    data = synth_pool(unfinished=False)
    slow = {"lr": 0.05, "width": 999}  # a warm start that trails at every early epoch
    data["runs"][tabulate.run_key(slow, 0)] = {
        "config": slow, "seed": 0, "index": -1, "params": 1, "flops": 1.0,
        "epochs": [{"epoch": e, "val_accuracy": a, "val_loss": 1.0, "train_loss": 1.0,
                    "seconds": 1.0} for e, a in enumerate([0.05, 0.06, 0.07, 0.99], 1)],
    }  # fmt: skip
    data["meta"]["warm_starts"] = [tabulate.config_key(slow)]
    t = PoolTable(data)
    assert t.warm == [tabulate.config_key(slow)] and t.n_configs == 8  # not in the pool
    cold, warm = (replay_pool(t, "sh1", 3, budget=20, warm=w) for w in (False, True))
    assert warm.variant == "random+sh1+warm" and warm.log[0] == (t.warm[0], "COMPLETE", 4)
    assert warm.best == 0.99 and cold.best < 0.99
    # the same permutation follows the warm start
    assert [k for k, _, _ in warm.log[1:]] == [k for k, _, _ in cold.log][: len(warm.log) - 1]
    # the section adds the +warm row (not a candidate) and says what the warm starts are worth
    from benchmarks.search import section

    path = tmp_path / "pool.json"
    path.write_text(json.dumps(data))
    rows, d = section.bench_search(
        section.TABLE, seeds=2, ray_seeds=0, quick=True, log=lambda m: None, pool_path=path,
        live_path=None,
    )  # fmt: skip
    p = d["pool"]
    assert p["warm"] == "random+sh3+warm" and p["chosen"] != p["warm"]
    assert section.WITHOUT_WARM in p["summary"][p["warm"]]["vs"]
    assert "1 warm start played first (random+sh3+warm, never pruned) vs without" in d["markdown"]


def test_stored_command_lines_rerun_as_written():
    """meta.command must parse again: lists spelled out, flags without a value, --limit left out."""
    import argparse

    ns = argparse.Namespace(out="t.json", seeds=[0, 1], warm_starts=True, quick=False, limit=3,
                            data_dir=None)  # fmt: skip
    assert tabulate.command_line("prog", ns) == "prog --out t.json --seeds 0 1 --warm-starts"
