"""cnnopt.sampling: a sampler seeded per trial, so that workers and runners never share a stream."""

from __future__ import annotations

import optuna
import pytest

from cnnopt.sampling import PerTrialSeedSampler, trial_seed
from cnnopt.study import Study

SPACE = """
def space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd", "rmsprop"]),
    }
"""


@pytest.fixture
def study(write_study) -> Study:
    return Study.load(write_study(SPACE))


def _params(trial: optuna.Trial, study: Study) -> dict:
    study.sample(trial)
    return dict(trial.params)


def test_two_runners_on_one_study_draw_apart(study):
    """Each runner builds its sampler from the same study seed: before, their first trials were
    the same configuration; now each trial's stream is its number's."""
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(study_name="s", storage=storage, sampler=study.make_sampler())
    b = optuna.load_study(study_name="s", storage=storage, sampler=study.make_sampler())
    drawn = [_params(s.ask(), study) for s in (a, b, a, b)]  # all running at once
    assert len({tuple(sorted(p.items())) for p in drawn}) == 4


def test_the_same_seed_draws_the_same_trials_again(study):
    def run(seed: int) -> list[dict]:
        ostudy = optuna.create_study(direction="maximize", sampler=study.make_sampler(seed))
        out = []
        for _ in range(8):  # past TPE's 5 start-up trials: the model's draws are seeded too
            t = ostudy.ask()
            out.append(_params(t, study))
            ostudy.tell(t, t.params["lr"])
        return out

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_a_finished_trial_lets_go_of_its_sampler(study):
    sampler = study.make_sampler()
    assert isinstance(sampler, PerTrialSeedSampler)
    ostudy = optuna.create_study(sampler=sampler)
    t = ostudy.ask()
    _params(t, study)
    assert len(sampler._per_trial) == 1
    ostudy.tell(t, 0.5)
    assert sampler._per_trial == {}


def test_trial_seeds_differ_by_study_seed_and_number():
    seeds = {trial_seed(s, n) for s in range(5) for n in range(50)}
    assert len(seeds) == 250 and all(0 <= x < 2**32 for x in seeds)
    assert trial_seed(0, 1) == trial_seed(0, 1)


def test_quasi_random_sampling_keeps_one_sequence(write_study):
    qmc = Study.load(write_study(SPACE + "\nsampler = 'qmc'\n"))
    assert isinstance(qmc.make_sampler(), optuna.samplers.QMCSampler)
