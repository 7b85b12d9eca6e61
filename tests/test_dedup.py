"""No configuration trained twice: copies of finished trials, waiting for a running twin, a fresh seed
per repeat with deduplicate = False, and stopping when a discrete space is used up -- in process and
with `cnnopt run --workers 2` as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from cnnopt import dedup
from cnnopt.objective import Objective
from cnnopt.storage import get_storage
from cnnopt.study import Study

from .conftest import ROOT, cnnopt_cmd

# a tiny CNN on the in-memory synthetic data; {space} is the body of space(trial)
STUDY = """
name = "{name}"
dataset = "synthetic"
filters = [4, 8]
hidden = [8]
epochs = {epochs}
pruner = "{pruner}"
sampler = "random"
n_startup_trials = 1
n_warmup_steps = 0
{extra}

def space(trial):
    return {space}
"""
TWO_BY_TWO = """{
        "batchnorm": trial.suggest_categorical("batchnorm", ["none", "after"]),
        "activation": trial.suggest_categorical("activation", ["relu", "gelu"]),
    }"""


def load(write_study, space="{}", epochs=2, pruner="none", extra="", name="dd", overrides=None):
    src = STUDY.format(name=name, epochs=epochs, pruner=pruner, extra=extra, space=space)
    return Study.load(write_study(src, f"{name}.py"), overrides)


def new_study(study: Study) -> optuna.Study:
    return optuna.create_study(
        direction="maximize", sampler=study.make_sampler(), pruner=study.make_pruner()
    )


# -- what counts as the same configuration --------------------------------------------------------


def test_hash_covers_fixed_and_set_values_not_where_the_data_lives(write_study):
    space = '{"lr": trial.suggest_categorical("lr", [0.01, 0.02])}'
    base = load(write_study, space)
    params = {"lr": 0.01}
    h = dedup.config_hash(base.config_from_params(params))
    assert h == dedup.config_hash(base.config_from_params(dict(params)))  # stable
    moved = load(write_study, space, overrides={"data_dir": "/elsewhere", "max_cache_gb": 1.0})
    assert dedup.config_hash(moved.config_from_params(params)) == h
    for overrides in ({"epochs": 3}, {"seed": 1}, {"train_subset": 100}, {"hflip": True}):
        other = load(write_study, space, overrides=overrides)
        assert dedup.config_hash(other.config_from_params(params)) != h, overrides
    assert dedup.config_hash(base.config_from_params({"lr": 0.02})) != h


# -- copies in one process ------------------------------------------------------------------------


def test_repeat_copies_the_complete_result_without_training(write_study):
    study = load(write_study, epochs=3)  # no space: every trial is the same configuration
    ostudy = new_study(study)
    ostudy.optimize(Objective(study), n_trials=3)
    first, *copies = ostudy.trials
    assert "duplicate_of" not in first.user_attrs and len(first.user_attrs["history"]) == 3
    for t in copies:
        assert t.state == TrialState.COMPLETE
        assert t.user_attrs["duplicate_of"] == 0
        assert t.value == first.value
        assert t.intermediate_values == first.intermediate_values
        assert "history" not in t.user_attrs  # no epoch trained
        assert t.user_attrs["config_hash"] == first.user_attrs["config_hash"]
        assert t.user_attrs["config"] == first.user_attrs["config"]
        assert t.user_attrs["seed"] == first.user_attrs["seed"] == 0


def test_repeat_of_a_pruned_trial_is_pruned_at_the_same_step(write_study):
    space = '{"lr": trial.suggest_float("lr", 1e-7, 1.0, log=True)}'
    study = load(write_study, space, epochs=4, pruner="median")
    ostudy = new_study(study)
    for lr in (0.03, 0.05, 1e-6, 1e-6):  # two good trials, a hopeless one, and its repeat
        ostudy.enqueue_trial({"lr": lr})
    ostudy.optimize(Objective(study), n_trials=4)
    original, repeat = ostudy.trials[2:]
    assert original.state == TrialState.PRUNED and original.last_step < 4  # the precondition
    assert repeat.state == TrialState.PRUNED
    assert repeat.user_attrs["duplicate_of"] == 2
    assert repeat.intermediate_values == original.intermediate_values
    assert repeat.last_step == original.last_step and repeat.value == original.value
    assert "history" not in repeat.user_attrs


def test_without_deduplicate_repeats_train_with_a_new_seed_each(write_study):
    study = load(write_study, extra="deduplicate = False")
    ostudy = new_study(study)
    ostudy.optimize(Objective(study), n_trials=3)
    trials = ostudy.trials
    assert [t.user_attrs["seed"] for t in trials] == [0, 1, 2]
    assert [t.user_attrs["config"]["train"]["seed"] for t in trials] == [0, 1, 2]
    assert len({t.user_attrs["config_hash"] for t in trials}) == 1  # the same configuration
    assert all("duplicate_of" not in t.user_attrs for t in trials)
    assert all(len(t.user_attrs["history"]) == 2 for t in trials)  # each one trained
    curves = {tuple(h["train_loss"] for h in t.user_attrs["history"]) for t in trials}
    assert len(curves) == 3  # three samples, not one curve three times


# -- waiting for a running twin (the protocol, driven by hand on one storage) -------------------


class Polls:
    """Counts the waiting loop's polls (its sleeps between two looks at the storage), so that a
    test waits for events, not for time: ``seen(th)`` returns once the loop has looked at the
    storage afresh, after everything the test wrote so far, and decided to wait again (or the
    thread has ended)."""

    def __init__(self):
        self.n = 0
        self.cond = threading.Condition()

    def sleep(self, _seconds: float) -> None:
        with self.cond:
            self.n += 1
            self.cond.notify_all()
        time.sleep(0.005)

    def seen(self, th: threading.Thread) -> None:
        # two polls: the first may belong to a look that began before the test's last write
        with self.cond:
            target = self.n + 2
            ok = self.cond.wait_for(lambda: self.n >= target or not th.is_alive(), timeout=60)
        assert ok, "the waiting loop stopped polling"


@pytest.fixture
def fast_poll(monkeypatch):
    import types

    polls = Polls()
    monkeypatch.setattr(
        dedup, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=polls.sleep)
    )
    return polls


def _plan_in_thread(ostudy, number, cfg, **kw):
    out: dict = {}

    def go():
        trial_id = ostudy._storage.get_trial_id_from_study_id_trial_number(ostudy._study_id, number)

        def publish(key, value):
            ostudy._storage.set_trial_user_attr(trial_id, key, value)

        out["plan"] = dedup.plan(ostudy, number, cfg, deduplicate=True, publish=publish, **kw)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, out


def _twin(trial, cfg, rank=None):
    """Make a hand-driven trial a twin of ``cfg``: it has published its hash (and ticket)."""
    trial.set_user_attr("seed", cfg.train.seed)
    trial.set_user_attr("config_hash", dedup.config_hash(cfg))
    if rank is not None:
        trial.set_user_attr(dedup.RANK, rank)


def test_later_trial_waits_for_a_running_twin_then_copies_it(write_study, fast_poll):
    study = load(write_study)
    cfg = study.base_config()
    ostudy = new_study(study)
    first = ostudy.ask()
    _twin(first, cfg)  # choosing: hash published, no ticket yet
    ostudy.ask()
    waits: list[int] = []
    th, out = _plan_in_thread(ostudy, 1, cfg, on_wait=waits.append)
    fast_poll.seen(th)
    assert th.is_alive() and waits == [0]  # waits while #0 chooses its ticket
    first.set_user_attr(dedup.RANK, 1)
    fast_poll.seen(th)
    assert th.is_alive()  # ... and while #0 (ticket 1, ahead of #1's) trains
    first.report(0.5, 1)
    ostudy.tell(first, 0.5)
    th.join(60)  # a guard against a hang: the plan is done well before
    plan = out["plan"]
    assert plan.duplicate_of == 0 and plan.source.value == 0.5
    assert ostudy.trials[1].user_attrs[dedup.RANK] == 1  # it saw no ticket when it chose
    assert waits == [0]


def test_a_twin_that_fails_is_trained_by_the_waiting_trial(write_study, fast_poll):
    study = load(write_study)
    cfg = study.base_config()
    ostudy = new_study(study)
    first = ostudy.ask()
    _twin(first, cfg, rank=1)
    ostudy.ask()
    th, out = _plan_in_thread(ostudy, 1, cfg)
    fast_poll.seen(th)
    assert th.is_alive()
    ostudy.tell(first, state=TrialState.FAIL)
    th.join(60)  # a guard against a hang: the plan is done well before
    assert out["plan"].source is None  # it trains the configuration itself


def test_line_is_by_ticket_not_trial_number(write_study, fast_poll):
    # a re-queued trial (#0 here) starts after a higher-numbered twin that already holds a ticket:
    # it queues behind it
    study = load(write_study)
    cfg = study.base_config()
    ostudy = new_study(study)
    ostudy.ask()
    later = ostudy.ask()
    _twin(later, cfg, rank=1)
    th, out = _plan_in_thread(ostudy, 0, cfg)
    fast_poll.seen(th)
    assert th.is_alive() and ostudy.trials[0].user_attrs[dedup.RANK] == 2
    ostudy.tell(later, 0.7)
    th.join(60)  # a guard against a hang: the plan is done well before
    assert out["plan"].duplicate_of == 1


def test_equal_tickets_go_by_trial_number(write_study, fast_poll):
    study = load(write_study)
    cfg = study.base_config()
    ostudy = new_study(study)
    ostudy.ask()
    later = ostudy.ask()
    _twin(later, cfg)  # #1 is choosing at the same moment as #0
    th, out = _plan_in_thread(ostudy, 0, cfg)
    fast_poll.seen(th)
    assert th.is_alive() and ostudy.trials[0].user_attrs[dedup.RANK] == 1
    later.set_user_attr(dedup.RANK, 1)  # #1 saw no ticket either: both hold ticket 1
    th.join(60)  # a guard against a hang: the plan is done well before
    assert not th.is_alive() and out["plan"].source is None  # (1, #0) goes before (1, #1)


def test_a_trial_still_sampling_does_not_hold_up_others(write_study, fast_poll):
    study = load(write_study)
    cfg = study.base_config()
    ostudy = new_study(study)
    ostudy.ask()  # running, no hash: it has not said what it trains
    ostudy.ask()
    th, out = _plan_in_thread(ostudy, 1, cfg)
    th.join(60)  # a guard against a hang: the plan is done well before
    assert not th.is_alive() and out["plan"].source is None


# -- running out of configurations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "overrides", "size"),
    [
        (TWO_BY_TWO, None, 4),
        (TWO_BY_TWO, {"activation": "relu"}, 2),  # --set pins one of them
        # conditional: momentum only exists for sgd
        (
            """dict(optimizer=trial.suggest_categorical("optimizer", ["sgd", "adam"]),
            **({"momentum": trial.suggest_float("momentum", 0.8, 0.9, step=0.1)}
               if trial.params["optimizer"] == "sgd" else {}))""",
            None,
            3,
        ),
        # conv_blocks=1 does not fit filters=[4, 8]: that combination is no configuration
        ('{"conv_blocks": trial.suggest_int("conv_blocks", 1, 2)}', None, 1),
        ('{"lr": trial.suggest_float("lr", 1e-3, 1e-2)}', None, None),  # continuous
        ("{}", None, 1),
    ],
)
def test_grid_of_a_discrete_space(write_study, space, overrides, size):
    grid = dedup.grid_hashes(load(write_study, space, overrides=overrides))
    assert (None if grid is None else len(grid)) == size


# the device is not the point: with the default `auto` the runner would import torch only to
# count GPUs (seconds of a 2-core CPU per run)
CPU = ("--device", "cpu")


def run(*args, timeout=240):
    return subprocess.run(
        cnnopt_cmd(*args, *CPU), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def trained(trials):
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_used_up_space_stops_the_run_with_one_line(write_study, tmp_path):
    path = write_study(
        STUDY.format(name="grid4", epochs=1, pruner="none", extra="", space=TWO_BY_TWO)
    )
    storage = str(tmp_path / "g.journal")
    r = run("run", str(path), "--n-trials", "10", "--storage", storage, "--no-progress")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "configurations of the search space" in ln]
    assert lines == ["cnnopt: all 4 configurations of the search space are trained "
                     "(deduplicate = True); stopping"]  # fmt: skip
    trials = optuna.load_study(study_name="grid4", storage=get_storage(storage)).trials
    originals = [t for t in trained(trials) if "duplicate_of" not in t.user_attrs]
    assert len(originals) == 4 == len({t.user_attrs["config_hash"] for t in originals})
    assert len(trials) < 10  # it stopped early instead of copying results
    # run again: nothing is left to try, so no trial is added
    again = run("run", str(path), "--n-trials", "3", "--storage", storage, "--no-progress")
    assert again.returncode == 0 and "configurations of the search space" in again.stdout
    assert len(optuna.load_study(study_name="grid4", storage=get_storage(storage)).trials) == len(
        trials
    )


def test_two_workers_never_train_the_same_configuration(write_study, tmp_path):
    # Both workers start with the same configuration (two warm starts that differ only in a
    # parameter the config ignores), then sample a 2-configuration space at random.
    path = write_study(
        """
        name = "race"
        dataset = "synthetic"
        filters = [4, 8]
        hidden = [8]
        epochs = 2
        pruner = "none"
        sampler = "random"
        enqueue = [{"batchnorm": "none", "unused": 0}, {"batchnorm": "none", "unused": 1}]

        def space(trial):
            trial.suggest_categorical("unused", [0, 1])  # not a config key: changes nothing
            return {"batchnorm": trial.suggest_categorical("batchnorm", ["none", "after"])}
        """
    )
    storage = str(tmp_path / "r.journal")
    # Trials wait after each epoch while `hold` exists (a test hook in cnnopt.objective), so the
    # two warm starts surely run at the same time, on a fast or a loaded machine alike.
    hold = tmp_path / "hold"
    hold.touch()
    proc = subprocess.Popen(
        cnnopt_cmd(
            "run", str(path), "--workers", "2", "--n-trials", "8", "--storage", storage,
            "--no-progress", *CPU,
        ),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CNNOPT_TEST_HOLD_AFTER_EPOCH": str(hold)}, start_new_session=True,
    )  # fmt: skip
    try:
        # both have taken their ticket in line, and one of them has trained an epoch
        end = time.time() + 150  # a guard against a hang, not a timing check
        while time.time() < end and proc.poll() is None:
            try:
                both = optuna.load_study(study_name="race", storage=get_storage(storage)).trials[:2]
            except Exception:  # noqa: BLE001 - study not created yet
                both = []
            if (
                len(both) == 2
                and all(t.state == TrialState.RUNNING and dedup.RANK in t.user_attrs for t in both)
                and any(t.intermediate_values for t in both)
            ):
                break
            time.sleep(0.2)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(
                "the two warm starts were never in line together:\n" + proc.communicate()[1]
            )
    finally:
        hold.unlink()
    out, err = proc.communicate(timeout=240)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert r.returncode == 0, r.stderr
    trials = optuna.load_study(study_name="race", storage=get_storage(storage)).trials
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    # the study file's enqueue: tagged as warm starts (the objective never prunes them)
    assert [t.user_attrs.get("warm_start") for t in trials[:3]] == [True, True, None]
    done = trained(trials)
    originals = [t for t in done if "duplicate_of" not in t.user_attrs]
    assert len(originals) == len({t.user_attrs["config_hash"] for t in originals}) == 2
    assert all("history" not in t.user_attrs for t in done if t not in originals)
    # the two warm starts ran at the same time: whichever took the later ticket (usually #1, but
    # either may) waited for the other and copied it
    first, second = trials[0], trials[1]
    if "duplicate_of" in first.user_attrs:
        first, second = second, first
    assert second.user_attrs["duplicate_of"] == first.number
    assert second.datetime_start < first.datetime_complete
    assert second.intermediate_values == first.intermediate_values
    assert "configurations of the search space are trained" in r.stdout


def test_a_fixed_trial_outside_any_study_trains(write_study):
    study = load(write_study, epochs=1)
    value = Objective(study)(optuna.trial.FixedTrial({}))
    assert 0 <= value <= 1


def test_a_stopped_run_interrupts_a_waiting_trial(write_study, fast_poll):
    from cnnopt.train import Interrupted

    study = load(write_study)
    cfg = study.base_config()
    ostudy = new_study(study)
    _twin(ostudy.ask(), cfg, rank=1)
    ostudy.ask()
    waits: list[int] = []
    publish = ostudy.trials[1].user_attrs.__setitem__  # the storage is not what this checks
    with pytest.raises(Interrupted):
        dedup.plan(ostudy, 1, cfg, deduplicate=True, publish=publish,
                   should_stop=lambda: True, on_wait=waits.append)  # fmt: skip
    assert waits == [0]  # the runner heard of the trial before it was interrupted
