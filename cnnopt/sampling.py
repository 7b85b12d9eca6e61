"""A sampler seeded per trial: the study seed and the trial's number say what a trial draws.

Optuna's samplers draw from one random stream per sampler object. cnnopt's workers each build
their own sampler, and so does every runner that joins a study; seeded from the study seed, two
runners started together on an empty study drew the same start-up configurations in the same
order (a seed per worker only moved the problem to the workers' numbering). The deduplication
turned the repeats into copies, so nothing was trained twice, but a study of 3 machines explored
as much at the start as one.

A trial's number is unique in its study (the storage hands it out), so a sampler built afresh for
each trial from ``(study seed, trial number)`` gives every trial its own stream, whichever worker,
runner or machine asks for it; and a study run again with the same seed draws the same start-up
configurations in the same trial numbers. Optuna's samplers keep what they learn in the storage
(TPE and GP refit on the study's trials at every draw, CMA-ES and NSGA-II keep their state in
system attributes), so a fresh sampler per trial samples as the long-lived one would, from its own
stream. Quasi-random sampling is the exception: its seed scrambles one sequence that the whole
study shares (a counter in the storage hands out its points), so it is not wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a study seeded ``seed`` (NumPy's SeedSequence mixes
    the two, so neighbouring seeds and numbers give unrelated streams)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0])


class PerTrialSeedSampler(BaseSampler):
    """Delegates each trial to a sampler made for it by ``make(trial_seed(seed, number))``."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        self._make = make
        self._seed = seed
        self._per_trial: dict[int, BaseSampler] = {}  # by trial id, while the trial runs

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        inner = self._per_trial.get(trial._trial_id)
        if inner is None:
            inner = self._per_trial[trial._trial_id] = self._make(
                trial_seed(self._seed, trial.number)
            )
        return inner

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        inner = self._for(trial)
        self._per_trial.pop(trial._trial_id, None)  # the trial is over: its stream is spent
        inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's stream is its own already (Optuna calls this for
        threads sharing one sampler, which then share nothing)."""
