"""Live studies of the search benchmark: budget accounting of a live record as a replay, the
summary's pairing, real `cnnopt run` studies on a tiny synthetic study (resumable), and real Ray
Tune where it is installed."""

from __future__ import annotations

import functools
import json
import math

import pytest

from benchmarks.search import live

LIVE_STUDY = """
name = "live_tiny"
dataset = "synthetic"
family = "cnn"
conv_blocks = 2
filters = [4, 8]
hidden = []
global_pool = True
epochs = 2
pruner = "successive_halving"
min_resource = 1
n_startup_trials = 2
enqueue = [{"lr": 0.01}]  # the live studies run without warm starts


def space(trial):
    return {"lr": trial.suggest_float("lr", 1e-3, 3e-2, log=True)}
"""


HW = {"cpu": "Some CPU", "torch_threads": 1}


def trial(values, state="COMPLETE", duplicate_of=None, key="k", hardware=HW):
    return {"values": values, "state": state, "duplicate_of": duplicate_of,
            "seconds": [1.0] * len(values), "params": {"lr": key}, "config_key": key,
            "hardware": dict(hardware) if hardware else {}}  # fmt: skip


FIRST = [0.4, 0.5, 0.6]  # every variant's first trial: the same draw, trained identically


def full(top, **kw):
    """A live study's trials: the shared first trial, then one that ends at ``top``."""
    return [trial(FIRST, key="first", **kw), trial([0.5, 0.7, top], key=f"t{top}", **kw)]


def test_a_live_record_replays_with_the_budget_rules():
    """Copies cost nothing, a pruned trial costs its epochs, and the trial the budget cuts never
    completes: the same rules as the tabulated replays."""
    rec = {
        "variant": "default",
        "seed": 1,
        "trials": [
            trial([0.5, 0.7, 0.8], key="a"),
            trial([0.5, 0.7, 0.8], duplicate_of=0, key="a"),
            trial([0.2], state="PRUNED", key="b"),
            trial([0.6, 0.9, 0.95], key="c"),  # cut at epoch 2 of 3 by a budget of 6
        ],
    }
    r = live.to_replay(rec, budget=6, epochs=3)
    assert (r.epochs, r.trials, r.duplicates, r.pruned) == (6, 4, 1, 1)
    assert r.best == 0.8 and r.best_key == "a"
    assert [s for _, s, _ in r.log] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert [e for e, _, _ in r.trace] == [3, 3, 4, 6]
    assert live.to_replay(rec, budget=7, epochs=3).best == 0.95  # exactly enough


def write_table(path, studies, budget=6, epochs=3):
    path.write_text(json.dumps({
        "meta": {"budget": budget, "epochs": epochs, "study_file": "s.py", "train_subset": 15000},
        "studies": {f"{v}/{s}": {"variant": v, "seed": s, "wall_s": 60.0, "trials": t}
                    for (v, s), t in studies.items()},
    }))  # fmt: skip


def test_summary_pairs_the_default_with_each_variant_on_common_seeds(tmp_path):
    path = tmp_path / "live.json"
    write_table(path, {
        ("default", 1): full(0.92), ("default", 2): full(0.90), ("default", 3): full(0.93),
        ("random", 1): full(0.90), ("random", 2): full(0.89),  # seed 3 still missing
        ("ray_asha", 1): full(0.91),
    })  # fmt: skip
    d, replays = live.summarize(path, target=0.91)
    s = d["summary"]
    assert list(s) == ["default", "random", "ray_asha"]
    assert s["default"]["best"] == [0.92, 0.90, 0.93] and s["default"]["reached"] == 2
    vs = s["random"]["vs_default"]
    assert vs["n"] == 2 and vs["mean"] == pytest.approx(0.015)  # seeds 1 and 2 only
    one = s["ray_asha"]["vs_default"]  # one common seed: its difference, no interval
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.01) and "low" not in one
    assert live._fmt_diff(one) == "+0.0100 (n=1, no interval below 5 pairs)"
    assert d["provisional"] == (
        "seeds so far default 3, random 2, ray_asha 1, ray_tpe_asha 0 (5 each required)"
    )
    assert [len(v) for v in replays.values()] == [3, 2, 1]
    md = "\n".join(live.live_markdown(d))
    assert f"**Incomplete ({d['provisional']}): the live figures" in md
    assert "+0.0150 (n=2, no interval below 5 pairs)" in md and "| 3 | 0.9300 | - | - |" in md
    # a second, reachable target: the pool's ceiling (only seed 3 of the default reaches 0.925)
    d, _ = live.summarize(path, target=0.91, reference=0.925)
    assert d["summary"]["default"]["reached_reference"] == 1
    md = "\n".join(live.live_markdown(d))
    assert "| reached pool ceiling 0.9250 |" in md and "| - | - | 2 of 3 | 7 | 1 of 3 |" in md


def test_from_five_seeds_the_difference_has_bootstrap_and_t_intervals(tmp_path):
    path = tmp_path / "live.json"
    diffs = [0.0443, 0.0010, 0.0053, 0.0287, 0.0157]  # one sign, widely spread
    studies = {("default", s): full(0.90) for s in range(1, 6)}
    studies |= {("random", s): full(0.90 - x) for s, x in zip(range(1, 6), diffs)}
    write_table(path, studies)
    table = json.loads(path.read_text())
    table["studies"]["default/1"]["wall_s"] = 0.0  # resumed by an old version: no time recorded
    path.write_text(json.dumps(table))
    d, _ = live.summarize(path, target=0.91)
    assert d["summary"]["default"]["wall_min_mean"] == 1.0  # the 4 timed studies, not 0.8
    vs = d["summary"]["random"]["vs_default"]
    assert vs["n"] == 5 and vs["ahead"] == 5 and vs["mean"] == pytest.approx(0.019)
    assert vs["low"] > 0 > vs["t_low"]  # the bootstrap excludes zero, the t interval does not
    cell = live._fmt_diff(vs)
    assert cell.startswith("+0.0190 [+0.00") and "bootstrap, [-0.00" in cell
    assert cell.endswith("t; ahead in 5 of 5 (n=5)")
    assert "a difference counts only where the t interval excludes zero" in "\n".join(
        live.live_markdown(d)
    )


def test_only_clean_pairs_enter_the_interval_and_the_rest_are_named(tmp_path):
    """A pair counts only where both studies record one and the same hardware and, for variants
    that start from the default's first configuration, the first trials agree to the last digit;
    the others are left out, each with its reason, and n counts the clean pairs."""
    path = tmp_path / "live.json"
    other_cpu = {"cpu": "Other CPU", "torch_threads": 1}
    studies = {("default", s): full(0.90) for s in range(1, 9)}
    studies |= {("random", s): full(0.90 - 0.01 * s) for s in range(1, 6)}  # clean: 1..5
    studies[("random", 6)] = [trial([0.4, 0.5, 0.61], key="first"), *full(0.85)[1:]]
    studies[("random", 7)] = full(0.85, hardware=other_cpu)
    studies[("random", 8)] = full(0.85, hardware=None)  # an old record: no hardware
    # noaug trains its first trial differently by design: only the hardware is compared
    studies |= {("noaug", s): [trial([0.5, 0.6, 0.7]), *full(0.91)[1:]] for s in (1, 2)}
    studies[("default", 2)][1]["hardware"] = {"cpu": "Some CPU", "torch_threads": 2}  # mixed
    write_table(path, studies)
    d, _ = live.summarize(path, target=0.95)
    r = d["summary"]["random"]
    # seed 2 of the default moved machines mid-study: not clean for any variant
    assert r["vs_default"]["seeds"] == [1, 3, 4, 5] and r["vs_default"]["n"] == 4
    assert r["vs_default"]["mean"] == pytest.approx(0.0325)
    assert r["unpaired"] == {
        2: "hardware mixed within a study (default's study)",
        6: "first trials differ",
        7: "hardware differs (Some CPU, 1 threads vs Other CPU, 1 threads)",
        8: "hardware not recorded (this study)",
    }
    # the weaker figure adds the seed whose only fault is the missing record: first trials agree
    assert r["vs_default_first_match"]["seeds"] == [1, 3, 4, 5, 8]
    noaug = d["summary"]["noaug"]
    assert noaug["vs_default"]["n"] == 1 and list(noaug["unpaired"]) == [2]
    assert noaug["vs_default_first_match"] is None  # its first trial is not the default's
    md = "\n".join(live.live_markdown(d))
    assert "(n=4, 4 unpaired, no interval below 5 pairs)" in md
    assert "- random search, no pruning: seed 2 (hardware mixed within a study" in md
    assert "seed 6 (first trials differ)" in md


def test_search_section_prints_the_live_part_its_rows_and_figure(tmp_path):
    from benchmarks.search import section

    path = tmp_path / "live.json"
    write_table(path, {("default", 1): full(0.92), ("default", 2): full(0.90),
                       ("random", 1): full(0.90), ("random", 2): full(0.91)})  # fmt: skip
    out = tmp_path / "out"
    rows, d = section.bench_search(
        section.TABLE, seeds=2, ray_seeds=0, quick=True, out_dir=out, log=lambda m: None,
        pool_path=None, live_path=path,
    )  # fmt: skip
    (row,) = [r for r in rows if r["name"].startswith("live:")]
    assert row["value"] == pytest.approx(0.91) and row["baseline_value"] == pytest.approx(0.905)
    assert (
        "(n=2, no interval below 5 pairs)" in row["note"]
        and "default 2, random 2, ray_asha 0, ray_tpe_asha 0 (5 each" in row["note"]
    )
    assert "### Live studies on the full space" in d["markdown"]
    assert (out / "search_live.html").stat().st_size > 100
    # more live studies later: --live-only rewrites the live part alone, as a full run would
    write_table(path, {("default", 1): full(0.92), ("default", 2): full(0.90),
                       ("random", 1): full(0.90), ("random", 2): full(0.91),
                       ("default", 3): full(0.93), ("random", 3): full(0.89)})  # fmt: skip
    refreshed = section.refresh_live(out, path)
    rows, d = section.bench_search(
        section.TABLE, seeds=2, ray_seeds=0, quick=True, out_dir=None, log=lambda m: None,
        pool_path=None, live_path=path,
    )  # fmt: skip
    assert "(n=3, no interval below 5 pairs)" in refreshed["markdown"]
    assert (out / "search.md").read_text() == refreshed["markdown"]
    head = "### Live studies on the full space"  # before it, timings differ between the runs
    assert refreshed["markdown"].split(head)[1] == d["markdown"].split(head)[1]
    written = json.loads((out / "search.json").read_text())["rows"]
    live_only = [r for r in written if r["name"].startswith("live:")]
    assert live_only == json.loads(json.dumps([r for r in rows if r["name"].startswith("live:")]))
    assert len(written) == len(rows)  # the replays' rows kept, the live rows replaced
    with pytest.raises(SystemExit, match="no section written there"):
        section.refresh_live(tmp_path / "none", path)


def test_a_study_held_by_a_live_process_is_skipped_and_a_dead_holder_is_taken_over(tmp_path):
    import subprocess
    import sys

    (tmp_path / "live-random-3.claim").write_text("1")  # pid 1 is alive
    assert not live._claim(tmp_path, "random", 3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "live-random-3.claim").write_text(str(dead.pid))
    assert live._claim(tmp_path, "random", 3)
    assert live._claim(tmp_path, "random", 3)  # this process's own claim


def test_redo_replaces_what_the_table_held_before_the_run_not_another_runs_redo():
    # one run per core shares a table: a row another run replaced after this one started stays
    held = {
        "variant": "tpe_sh1",
        "seed": 1,
        "trials": [{"hardware": {"cpu": "x", "torch_threads": 1}}],
    }
    old, new = (
        {**held, "saved_at": "2026-12-01T00:00:00+00:00"},
        {**held, "saved_at": "2026-12-08T01:00:00+00:00"},
    )
    started = "2026-12-08T00:00:00+00:00"
    assert "--redo tpe_sh1" in live._why_again(old, "tpe_sh1", False, {"tpe_sh1"}, started)
    assert "--redo" in live._why_again(held, "tpe_sh1", False, {"tpe_sh1"}, started)  # no time
    assert live._why_again(new, "tpe_sh1", False, {"tpe_sh1"}, started) == ""
    assert live._why_again(old, "tpe_sh1", False, {"default"}, started) == ""
    # --redo-before: the time a redo begun in an earlier session started, in the table's format
    assert live._iso("2026-12-08T00:00") == "2026-12-08T00:00:00.000000+00:00"
    assert live._iso("2026-12-08T01:00+01:00") == live._iso("2026-12-08T00:00")
    with pytest.raises(SystemExit, match="'yesterday': not an ISO 8601 time"):
        live._iso("yesterday")


def test_summary_without_a_table_is_one_line(tmp_path):
    d, replays = live.summarize(tmp_path / "none.json")
    assert replays == {} and "no table at none.json" in d["note"]
    assert live.live_markdown(d) == [d["note"]]


@pytest.mark.slow
def test_live_studies_spend_the_budget_warm_starts_only_in_warm_and_resume(
    tmp_path, write_study, monkeypatch
):
    """Real `cnnopt run` subprocesses: each variant trains at least the budget, the study
    file's warm start runs only in the `warm` variant, and a rerun trains nothing more."""
    # the driver looks at the journal every 2 s (a live study runs for an hour): here every 0.2 s,
    # so that a tiny study's end and its spent budget are seen at once
    monkeypatch.setattr(live, "run_cnnopt", functools.partial(live.run_cnnopt, poll_s=0.2))
    study_file = write_study(LIVE_STUDY)
    out = tmp_path / "live.json"
    logs: list[str] = []
    kw = dict(variants=["default", "random", "warm"], seeds=[7], study_file=str(study_file),
              budget=4, epochs=2, train_subset=None, command="cmd", workdir=tmp_path / "journals",
              log=logs.append)  # fmt: skip
    table = live.run_live(out, **kw)
    studies = table["studies"]
    assert set(studies) == {"default/7", "random/7", "warm/7"}
    for rec in studies.values():
        epochs = sum(len(t["values"]) for t in rec["trials"] if t["duplicate_of"] is None)
        assert epochs >= 4 and rec["seed"] == 7
        assert live.to_replay(rec, 4, 2).epochs == 4
        assert rec["trials"][0]["hardware"]["cpu"] and rec["trials"][0]["hardware"]["torch_threads"]
    for key in ("default/7", "random/7"):
        assert all(t["params"]["lr"] != 0.01 for t in studies[key]["trials"])  # no warm start
    # the warm start first, trained to the end like any trial, then the sampler's own draws
    warm = studies["warm/7"]["trials"]
    assert warm[0]["params"] == {"lr": 0.01} and len(warm[0]["values"]) == 2
    assert all(t["params"]["lr"] != 0.01 for t in warm[1:])
    # same seed: the random sampler and TPE's startup draw the same first configuration
    assert studies["default/7"]["trials"][0]["params"] == studies["random/7"]["trials"][0]["params"]
    # a line per finished trial, ending with the budget spent and the best complete value
    lines = [m for m in logs if m.startswith("live-default-7:")]
    assert lines[0] == "live-default-7: 0/4 epochs, 0 trials finished"
    assert "trials finished, best 0." in lines[-1]  # how many lines between depends on polling
    n = len(logs)
    live.run_live(out, **kw)
    assert len(logs) == n  # every study was already in the table
    assert not list((tmp_path / "journals").glob("*.claim"))  # claims released
    assert json.loads(out.read_text())["meta"]["command"] == "cmd"
    # a study recorded without its hardware (an older run) pairs with none: --redo-unrecorded
    # runs that one again (here its journal, whose trials record it, is resumed) and no other
    table = json.loads(out.read_text())
    for t in table["studies"]["random/7"]["trials"]:
        t.pop("hardware")
    out.write_text(json.dumps(table))
    live.run_live(out, **kw, redo_unrecorded=True)
    assert logs[n:].count("random/7: hardware not recorded: running it again") == 1
    assert not any(m.startswith(("default/7: h", "warm/7: h")) for m in logs[n:])
    redone = json.loads(out.read_text())["studies"]["random/7"]
    assert (
        live.study_hardware(redone)[0] == "" and redone["trials"] == studies["random/7"]["trials"]
    )
    # --redo warm: that variant's study starts over (its journal set aside) and is replaced
    n = len(logs)
    live.run_live(out, **kw, redo=["warm"])
    assert [m for m in logs[n:] if "running it again" in m] == [
        "warm/7: held from before this run (--redo warm): running it again"
    ]
    assert list((tmp_path / "journals").glob("live-warm-7.journal.stale"))
    again = json.loads(out.read_text())["studies"]["warm/7"]
    assert again["saved_at"] >= redone["saved_at"] and again["trials"][0]["params"] == {"lr": 0.01}


@pytest.mark.slow
def test_live_ray_tune_samples_the_study_space_under_asha(tmp_path, write_study):
    pytest.importorskip("ray.tune")
    study_file = write_study(LIVE_STUDY)
    trials = live.run_ray(7, study_file=str(study_file), budget=5, epochs=2, train_subset=None,
                          data_dir=None, log=lambda m: None)  # fmt: skip
    assert sum(len(t["values"]) for t in trials) >= 5
    assert all(1e-3 <= t["params"]["lr"] <= 3e-2 for t in trials)
    rec = {"variant": "ray_asha", "seed": 7, "trials": trials}
    r = live.to_replay(rec, 5, 2)
    assert r.epochs == 5 and math.isfinite(r.best)
    # every trial records where it ran, as cnnopt's trials do: pairs can be checked
    assert all(t["hardware"]["cpu"] and t["hardware"]["torch_threads"] == 1 for t in trials)
    # Ray's OptunaSearch with TPE, the same seed: TPE's startup draws are the random sampler's,
    # so its first trial is the random searcher's, trained identically
    tpe = live.run_ray(7, study_file=str(study_file), budget=5, epochs=2, train_subset=None,
                       data_dir=None, log=lambda m: None, sampler="tpe")  # fmt: skip
    assert sum(len(t["values"]) for t in tpe) >= 5
    assert tpe[0]["params"] == trials[0]["params"] and tpe[0]["values"] == trials[0]["values"]
    assert live.pair_fault("ray_tpe_asha", {"trials": trials}, {"trials": tpe}) == ""


@pytest.mark.slow
def test_live_ray_tune_a_diverged_configuration_ends_its_trial_not_the_study(tmp_path, write_study):
    """A configuration whose loss becomes NaN fails as a cnnopt trial fails: Ray's experiment
    goes on to its other trials and the driver gets their records, not an error."""
    pytest.importorskip("ray.tune")
    diverging = LIVE_STUDY.replace("epochs = 2", 'epochs = 2\noptimizer = "sgd"')
    diverging = diverging.replace('{"lr": 0.01}', '{"lr": 0.01, "batch_size": 32}').replace(
        'trial.suggest_float("lr", 1e-3, 3e-2, log=True)',
        'trial.suggest_categorical("lr", [1e-2, 1e6]), '
        # a second parameter: Ray checks a result's metrics strictly once it holds more than one
        # key besides its own (the config's keys count), so one parameter would hide that check
        '"batch_size": trial.suggest_categorical("batch_size", [32, 64])',
    )
    study_file = write_study(diverging)
    trials = live.run_ray(8, study_file=str(study_file), budget=4, epochs=2, train_subset=None,
                          data_dir=None, log=lambda m: None)  # fmt: skip
    # seed 8 samples lr 1e6 first, then 1e-2: every trial that reported is one that trained (a
    # diverged one reports nothing before it fails), and the experiment reached its budget
    assert trials and all(t["params"]["lr"] == 1e-2 for t in trials)
    assert all(math.isfinite(v) for t in trials for v in t["values"])


def test_summary_flag_prints_the_live_part_and_runs_nothing(tmp_path, capsys):
    path = tmp_path / "live.json"
    write_table(path, {("default", 1): full(0.92), ("random", 1): full(0.90)})
    live.main(["--out", str(path), "--summary"])
    out = capsys.readouterr().out
    assert out.startswith("### Live studies on the full space")
    assert "| 1 | 0.9200 | 0.9000 |" in out
    assert "reached pool ceiling" in out  # the committed pool's ceiling, as the section has it
    assert json.loads(path.read_text())["studies"].keys() == {"default/1", "random/1"}
