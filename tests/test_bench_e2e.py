"""benchmarks/search/e2e.py: the end-to-end table's record of a study and its summary."""

from __future__ import annotations

import pytest

from benchmarks.search import e2e

from .conftest import STUDY_SOURCE, make_study


def _row(seed: int, acc: float | None, source: str = "found by the search") -> dict:
    row = {
        "study_seed": seed,
        "study": {
            "seconds": 2700.0,
            "trials": 9,
            "states": {"COMPLETE": 3, "PRUNED": 5, "FAIL": 1},
            "best": {"number": 8, "value": 0.9418, "source": source, "params": {},
                     "params_count": 266666, "flops": 37_000_000,
                     "hardware": {"cpu": "AMD EPYC", "gpu": None, "torch_threads": 1}},
        },
    }  # fmt: skip
    if acc is not None:
        row["final"] = {"test_accuracy": acc, "seconds": 1740.0,
                        "hardware": {"cpu": "AMD EPYC", "gpu": None, "torch_threads": 2}}  # fmt: skip
    return row


def test_summary_is_the_mean_over_study_seeds_with_a_t_interval():
    table = {"rows": {"12": _row(12, 0.95), "13": _row(13, 0.93), "14": _row(14, 0.94),
                      "15": _row(15, None)}}  # fmt: skip
    sm = e2e.summarize(table, reported=False)
    assert sm["seeds"] == [12, 13, 14] and sm["n"] == 3  # the untrained seed is not counted
    assert sm["mean"] == pytest.approx(0.94)
    # s = 0.01, t(2) = 4.303: half-width 0.01 * 4.303 / sqrt(3)
    assert sm["t_high"] - sm["mean"] == pytest.approx(0.01 * 4.3027 / 3**0.5, rel=1e-3)
    md = e2e.markdown(table)
    assert "| 12 | #8 (found by the search) | 3 / 5 / 1 | 94.18% | **95.00%** |" in md
    assert "| 15 | #8 (found by the search) | 3 / 5 / 1 | 94.18% | not trained |" in md
    assert "266,666 | 37.0 | 45 / 29 | AMD EPYC, threads 1/2 |" in md
    assert "over 3 study seeds, harness only: **94.00%**" in md
    # the reported row (seed 5, journal not kept) is shown, marked, and counted where said
    assert "| 5 (reported) | #8 (found by the search) |" in md
    assert e2e.summarize(table)["seeds"] == [5, 12, 13, 14] and e2e.summarize(table)[
        "reported"
    ] == [5]
    assert "over 4 study seeds: " in md
    one = e2e.markdown({"rows": {"12": _row(12, 0.95)}})
    assert "harness only" not in one  # no interval from one seed of its own


def test_study_record_names_the_best_trial_its_source_and_hardware(tmp_path):
    warm = (
        "enqueue = [{'lr': 0.02, 'batch_size': 32, 'batchnorm': 'after', 'activation': 'relu'}]\n"
    )
    make_study(tmp_path, "e2", n_trials=3, source=STUDY_SOURCE.format(name="e2", epochs=1) + warm)
    url = str(tmp_path / "storage" / "e2.journal")
    rec = e2e.study_record(url, "e2")
    assert rec["trials"] == 3 and sum(rec["states"].values()) == 3
    best = rec["best"]
    assert best["source"] == ("written into the study file (enqueue)" if best["number"] == 0
                              else "found by the search")  # fmt: skip
    assert best["params_count"] > 0 and best["flops"] > 0 and best["hardware"]["cpu"]
    assert len(rec["hardware"]) == 1 and rec["seconds"] > 0  # one machine trained every trial
    assert e2e.spent(url, "e2", "finished") == 3
    assert e2e.spent(str(tmp_path / "none.journal"), "e2", "finished") == 0
    trained = sum(len(t["intermediate_values"]) for t in _journal_trials(url, "e2"))
    assert e2e.spent(url, "e2", "epochs") == rec["epochs"] == trained > 0


def test_study_record_counts_a_diverged_epoch_as_the_runner_does(tmp_path):
    # the epoch whose loss became NaN reported no value, but it was trained: `cnnopt run
    # --epoch-budget` counts it, and a resumed epoch-budget study must too
    import optuna
    from optuna.trial import TrialState

    from cnnopt.storage import get_storage

    url = str(tmp_path / "d.journal")
    study = optuna.create_study(study_name="d", storage=get_storage(url))
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": float("nan")}]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL, intermediate_values={1: 0.5}, user_attrs={"history": history}
        )
    )
    study.add_trial(optuna.trial.create_trial(value=0.6, intermediate_values={1: 0.5, 2: 0.6}))
    assert e2e.study_record(url, "d")["epochs"] == 4


def _journal_trials(url: str, name: str) -> list[dict]:
    import optuna

    from cnnopt.storage import get_storage

    study = optuna.load_study(study_name=name, storage=get_storage(url))
    return [{"intermediate_values": t.intermediate_values} for t in study.trials]


def test_an_epoch_budget_runs_each_study_to_its_epochs_and_resumes(tmp_path):
    (tmp_path / "eb.py").write_text(STUDY_SOURCE.format(name="eb", epochs=2))
    out = tmp_path / "eb.json"
    kw = dict(seeds=[3], workdir=tmp_path / "w", data_dir=None, workers=1, device="cpu",
              study=str(tmp_path / "eb.py"), final=False, epoch_budget=5)  # fmt: skip
    table = e2e.run(out, **kw)
    row = table["rows"]["3"]["study"]
    # 2-epoch trials: the third starts with 4 of 5 epochs trained and finishes; none after it
    assert 5 <= row["epochs"] <= 6 and row["finished"] == 3
    assert table["meta"]["epoch_budget"] == 5 and table["meta"]["n_trials"] is None
    assert f"/ {row['states'].get('FAIL', 0)} ({row['epochs']} epochs) |" in e2e.markdown(table)
    again = e2e.run(out, **kw)  # spent: nothing more is run
    assert again["rows"]["3"]["study"]["trials"] == row["trials"]
    with pytest.raises(SystemExit, match="5-epoch budget, not of .* with --set nothing: give"):
        e2e.run(out, **{**kw, "epoch_budget": None})


def _trial(number: int, value: float | None, bn: str = "after") -> dict:
    state = "COMPLETE" if value is not None else "PRUNED"
    return {"number": number, "state": state, "values": [0.5, value or 0.6],
            "params": {"batchnorm": bn}}  # fmt: skip


def test_first_trials_pairs_the_best_within_n_trials_per_seed():
    studies = {
        "default/1": {"trials": [_trial(0, 0.80, "none"), _trial(1, None), _trial(2, 0.90)]},
        "default/2": {"trials": [_trial(0, 0.85), _trial(1, 0.86, "none"), _trial(2, 0.88)]},
        "warm/1": {"trials": [_trial(0, 0.89), _trial(1, 0.70), _trial(2, 0.91)]},
        "warm/2": {"trials": [_trial(0, 0.87), _trial(1, 0.80), _trial(2, 0.80)]},
    }
    ft = e2e.first_trials({"studies": studies}, n=2)
    d = ft["variants"]["default"]
    assert d[1] == {"first": 0.80, "all": 0.90, "trials": 3, "batchnorm_first": 1}
    assert d[2]["first"] == 0.86 and d[2]["all"] == 0.88
    assert ft["default_all_minus_first"]["mean"] == pytest.approx((0.10 + 0.02) / 2)
    assert ft["warm_minus_default_first"]["mean"] == pytest.approx((0.09 + 0.01) / 2)
    md = e2e.first_trials_markdown(ft)
    assert "| default | 1: 80.0 / 90.0 (3), 2: 86.0 / 88.0 (3) | 1, 1 |" in md
    assert "warm minus default, first 2 trials: +5.00 points" in md


def test_a_variant_of_the_search_gets_a_table_of_its_own(tmp_path):
    out = tmp_path / "t.json"
    e2e.save_table({"meta": {"sets": []}, "rows": {"12": _row(12, 0.95)}}, out)
    with pytest.raises(SystemExit, match="--set \\['n_startup_trials=3'\\]: give another --out"):
        e2e.run(out, seeds=[12], workdir=tmp_path, data_dir=None, sets=("n_startup_trials=3",))
    # another study file's search is another variant, though no setting differs
    with pytest.raises(
        SystemExit, match="holds studies of studies/fashion_cnn_bn.py .* not of v.py"
    ):
        e2e.run(out, seeds=[12], workdir=tmp_path, data_dir=None, study="v.py")
    variant = {"meta": {"sets": ["n_startup_trials=3"]}, "rows": {"12": _row(12, 0.95)}}
    assert e2e.summarize(variant)["seeds"] == [12]  # the shipped search's reported runs stay out
    other = {"meta": {"sets": [], "study_file": "v.py"}, "rows": {"12": _row(12, 0.95)}}
    assert e2e.summarize(other)["seeds"] == [12]
    assert e2e._workdir("t/focused.json", [], "v.py").name == "focused"
    assert e2e._workdir("t/fashion_e2e.json", []).name == "e2e"
    assert e2e._workdir("t/budget90.json", [], e2e.STUDY_FILE, 90).name == "budget90"


def test_the_focused_variant_loads_and_keeps_the_shipped_settings():
    from cnnopt.study import Study

    shipped = Study.load(e2e.REPO / e2e.STUDY_FILE)
    focused = Study.load(e2e.REPO / "benchmarks/search/variants/fashion_cnn_bn_focused.py")
    differ = {k for k, v in vars(focused.settings).items() if v != getattr(shipped.settings, k)}
    assert differ == {"name", "enqueue"}  # only the space (and its warm starts) is the variant's
    assert focused.fixed == shipped.fixed


def test_welch_interval_has_satterthwaite_degrees_of_freedom():
    from benchmarks.search.stats import welch

    d = welch([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
    # variances of the means 1/3 and 1/9; df = 3.2, rounded down to 3 (t = 3.182)
    assert d.mean == pytest.approx(5 / 3)
    assert d.high - d.mean == pytest.approx(3.182 * 2 / 3)
    with pytest.raises(ValueError, match="2 values per group, got 1 and 3"):
        welch([1.0], [0.0, 0.0, 1.0])


def test_compare_sets_two_searches_side_by_side_without_pairing_seeds():
    variant = {"meta": {"sets": [], "study_file": "v.py"},
               "rows": {"21": _row(21, 0.95), "22": _row(22, None), "23": _row(23, 0.96)}}  # fmt: skip
    variant["rows"]["22"]["study"]["best"]["value"] = 0.93
    base = {"meta": {"sets": []}, "rows": {"12": _row(12, 0.94), "13": _row(13, 0.93)}}
    cmp = e2e.compare(variant, base)
    # the shipped table brings its reported rows: seed 5 (final) and seed 11 (study only)
    assert cmp["validation"]["variant"] == [0.9418, 0.93, 0.9418]
    assert len(cmp["validation"]["base"]) == 4 and cmp["test"]["base"][0] == 0.9538
    assert cmp["test"]["variant"] == [0.95, 0.96]
    md = e2e.compare_markdown(cmp, ("focused", "shipped"))
    assert "| test after 50 epochs | 95.50% (2 seeds) | 94.13% (3 seeds) |" in md
