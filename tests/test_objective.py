import optuna
import pytest
from optuna.trial import TrialState

from cnnopt.errors import TrialFailed
from cnnopt.objective import Objective
from cnnopt.study import Study

STUDY = """
name = "obj"
dataset = "synthetic"
filters = [4, 8]
hidden = [8]
epochs = 4
batch_size = 64
pruner = "{pruner}"
n_startup_trials = 1
n_warmup_steps = 0
min_resource = 1
reduction_factor = 2

def space(trial):
    return {{"lr": trial.suggest_float("lr", 1e-7, 1e7, log=True)}}
"""


def make(write_study, pruner="median"):
    study = Study.load(write_study(STUDY.format(pruner=pruner)))
    ostudy = optuna.create_study(
        # a fixed name: Hyperband assigns brackets by a hash of study name and trial number
        study_name="obj",
        direction="maximize",
        sampler=study.make_sampler(),
        pruner=study.make_pruner(),
    )
    return study, ostudy


def test_trial_records_curves_size_speed_and_config(write_study):
    study, ostudy = make(write_study)
    ostudy.optimize(Objective(study), n_trials=1)
    t = ostudy.trials[0]
    assert t.state == TrialState.COMPLETE
    assert sorted(t.intermediate_values) == [1, 2, 3, 4]
    ua = t.user_attrs
    assert [h["epoch"] for h in ua["history"]] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "val_accuracy", "seconds", "images_per_second"} <= set(
        ua["history"][0]
    )
    assert ua["params_count"] > 0 and ua["flops"] > 0 and ua["seconds_per_epoch"] > 0
    assert ua["device"] == "cpu" and ua["seed"] == 0 and ":" in ua["worker"]
    assert ua["config"]["train"]["lr"] == t.params["lr"]
    assert t.value == ua["history"][-1]["val_accuracy"]


@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive_halving"])
def test_pruners_stop_bad_trials_with_ask_and_tell(write_study, pruner):
    study, ostudy = make(write_study, pruner)
    objective = Objective(study)
    # good trials, then hopeless ones (tiny lr) that the pruner must stop early; each lr differs,
    # as a repeated configuration would copy its first run's outcome instead of training
    for lr in [0.03, 0.05, 0.04, 0.06] + [1e-6 * (1 + i / 10) for i in range(6)]:
        ostudy.enqueue_trial({"lr": lr})
        trial = ostudy.ask()
        try:
            ostudy.tell(trial, objective(trial))
        except optuna.TrialPruned:
            ostudy.tell(trial, state=TrialState.PRUNED)
    states = [t.state for t in ostudy.trials]
    assert states[0] == TrialState.COMPLETE  # nothing to compare the first trial with
    assert TrialState.PRUNED in states[4:], states
    pruned = [t for t in ostudy.trials if t.state == TrialState.PRUNED]
    assert all(len(t.intermediate_values) < 4 for t in pruned)


def test_diverging_trial_fails_with_reason_and_next_trial_runs(write_study):
    study, ostudy = make(write_study)
    study.fixed.update(optimizer="sgd", amp="off")
    objective = Objective(study)
    ostudy.enqueue_trial({"lr": 1e6})  # far outside the space: SGD explodes
    ostudy.enqueue_trial({"lr": 0.03})
    ostudy.optimize(objective, n_trials=2, catch=(TrialFailed,))
    first, second = ostudy.trials
    assert first.state == TrialState.FAIL
    assert "diverged" in first.user_attrs["fail_reason"]
    assert second.state == TrialState.COMPLETE


def test_inconsistent_sampled_combination_fails_only_that_trial(write_study):
    path = write_study(
        """
        dataset = "synthetic"
        epochs = 1
        def space(trial):
            n = trial.suggest_int("conv_blocks", 1, 2)
            return {"conv_blocks": n, "filters": [8, 16][:1]}  # wrong length when n == 2
        """
    )
    study = Study.load(path)
    ostudy = optuna.create_study(direction="maximize")
    ostudy.enqueue_trial({"conv_blocks": 2})
    ostudy.enqueue_trial({"conv_blocks": 1})
    ostudy.optimize(Objective(study), n_trials=2, catch=(TrialFailed,))
    bad, good = ostudy.trials
    assert bad.state == TrialState.FAIL and "conv_blocks=2" in bad.user_attrs["fail_reason"]
    assert good.state == TrialState.COMPLETE
