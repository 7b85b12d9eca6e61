"""What the report reads from a study: each trial's values, the trials a figure draws, values that
compare like with like, and what the study cost and saved. No plotting here."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from cnnopt.config import KEY_SECTION

# -- values of a trial ---------------------------------------------------------------------------


def trial_value_of(t: FrozenTrial, key: str) -> Any:
    """A flat config key of a trial: from its params, else from its stored resolved config."""
    if key in t.params:
        return t.params[key]
    cfg = t.user_attrs.get("config")
    section = KEY_SECTION.get(key)
    if isinstance(cfg, dict) and section and key in cfg.get(section, {}):
        v = cfg[section][key]
        return tuple(v) if isinstance(v, list) else v
    return None


def duplicate_of(t: FrozenTrial) -> int | None:
    """The number of the trial whose result this one reused, or None (it trained itself)."""
    v = t.user_attrs.get("duplicate_of")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def epochs_reached(t: FrozenTrial) -> int:
    """The last epoch of a trial's curve: its last intermediate step, else its stored history."""
    if t.intermediate_values:
        return int(max(t.intermediate_values))
    hist = t.user_attrs.get("history")
    if isinstance(hist, list):
        epochs = [h.get("epoch") for h in hist if isinstance(h, dict)]
        return max((int(e) for e in epochs if isinstance(e, int | float)), default=0)
    return 0


def epochs_trained(t: FrozenTrial) -> int:
    """Epochs this trial itself trained: none for a duplicate; a trial resumed from a checkpoint
    carries its original's first epochs in its curve, and those were trained (and are counted) by
    the original."""
    if duplicate_of(t) is not None:
        return 0
    resumed = t.user_attrs.get("resumed_from_epoch") or 0
    return max(0, epochs_reached(t) - int(resumed))


def value_at(t: FrozenTrial, epoch: int) -> float | None:
    """The trial's intermediate value at ``epoch``, or at the last step it reported before it."""
    steps = [s for s, v in t.intermediate_values.items() if s <= epoch and math.isfinite(v)]
    return float(t.intermediate_values[max(steps)]) if steps else None


def last_value(t: FrozenTrial) -> float | None:
    """A complete trial's value; a pruned trial's last finite intermediate value."""
    if t.state == TrialState.COMPLETE:
        return float(t.value) if t.value is not None and math.isfinite(t.value) else None
    steps = [s for s, v in t.intermediate_values.items() if math.isfinite(v)]
    return float(t.intermediate_values[max(steps)]) if steps else None


def complete_trials(ostudy: optuna.Study) -> list[FrozenTrial]:
    """Complete trials with a finite value, duplicates left out (their point is their original's)."""
    return [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and duplicate_of(t) is None
    ]


def pruned_trials(ostudy: optuna.Study) -> list[FrozenTrial]:
    """Pruned trials that reported a value before they were cut, duplicates left out."""
    return [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if duplicate_of(t) is None and last_value(t) is not None
    ]


def n_complete(ostudy: optuna.Study) -> int:
    """Complete trials as Optuna's own figures count them (duplicates included)."""
    return len(ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def finished_trials(ostudy: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, and pruned ones that reported a value before they were cut."""
    return sorted(complete_trials(ostudy) + pruned_trials(ostudy), key=lambda t: t.number)


def comparable_values(trials: list[FrozenTrial]) -> tuple[dict[int, float], int | None]:
    """Values of ``trials`` (by trial number) that compare like with like, and the epoch they are
    taken at (None: each complete trial's final value).

    Final values when every trial is complete and all reached the same epoch (or none reported
    intermediate values); else every trial's value at the largest epoch all of them reached
    (trials without intermediate values cannot be placed there and are left out)."""
    reached = {epochs_reached(t) for t in trials if t.intermediate_values}
    if all(t.state == TrialState.COMPLETE for t in trials) and len(reached) <= 1:
        return {t.number: float(t.value) for t in trials}, None
    curves = [t for t in trials if t.intermediate_values]
    common = min(epochs_reached(t) for t in curves)
    out = {t.number: value_at(t, common) for t in curves}
    return {n: v for n, v in out.items() if v is not None}, common


def better(ostudy: optuna.Study) -> Callable[[float, float], bool]:
    if ostudy.direction == optuna.study.StudyDirection.MINIMIZE:
        return lambda a, b: a < b
    return lambda a, b: a > b


def metric_name(ostudy: optuna.Study) -> str:
    return str(ostudy.user_attrs.get("metric", "objective value"))


# -- a copy in which pruned trials count as complete, for Optuna's figures ------------------------

# Extra axes of the parallel coordinates when pruned trials are drawn. Optuna orders the axes by
# name: the brackets put these two first, beside the value they qualify.
STATE_DIM, EPOCH_DIM = "(trial state)", "(epoch of value)"


def with_pruned(ostudy: optuna.Study) -> tuple[optuna.Study, list[FrozenTrial]]:
    """An in-memory copy of the finished trials in which every pruned trial is complete with its
    last reported value, for Optuna's figures (they draw complete trials only). Copy trial i is
    the returned list's trial i. Each copy also carries two parameters for the parallel
    coordinates: its state and the epoch its value is from."""
    originals = finished_trials(ostudy)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        copy = optuna.create_study(direction=ostudy.direction)
    finally:
        optuna.logging.set_verbosity(level)
    top = max([epochs_reached(t) for t in originals] + [1])
    for t in originals:
        copy.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=last_value(t),
                params={
                    **t.params,
                    STATE_DIM: t.state.name.lower(),
                    EPOCH_DIM: max(1, epochs_reached(t)),
                },
                distributions={
                    **t.distributions,
                    STATE_DIM: CategoricalDistribution(["complete", "pruned"]),
                    EPOCH_DIM: IntDistribution(1, top),
                },
            )
        )
    return copy, originals


# -- summary -------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a study cost and what pruning and deduplication saved, counted in epochs."""

    states: dict[str, int] = field(default_factory=dict)  # state name -> trials
    duplicates: int = 0  # trials that reused an earlier identical configuration's result
    epochs_trained: int = 0  # by all trials, failed ones included
    pruned_counted: int = 0  # pruned trials whose configured epochs are known
    pruned_unknown: int = 0  # pruned trials without a recorded epoch budget (not cnnopt's)
    epochs_saved_pruning: int = 0  # sum over pruned trials: configured epochs - epochs reached
    epochs_saved_dedup: int = 0  # sum over duplicates: the epochs their original trained
    wall_seconds: float | None = None  # first start to last finish (to now while trials run)
    running: int = 0


def summarize(ostudy: optuna.Study, now: dt.datetime | None = None) -> Summary:
    trials = ostudy.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    s = Summary()
    for t in trials:
        s.states[t.state.name] = s.states.get(t.state.name, 0) + 1
        s.epochs_trained += epochs_trained(t)
        orig = duplicate_of(t)
        if orig is not None:
            # a duplicate saved what its original's result cost: every epoch of its curve
            s.duplicates += 1
            if orig in by_number:
                s.epochs_saved_dedup += epochs_reached(by_number[orig])
            continue  # what its original's pruning saved is counted once, on the original
        configured = trial_value_of(t, "epochs")
        if t.state == TrialState.PRUNED and isinstance(configured, int):
            s.pruned_counted += 1
            s.epochs_saved_pruning += max(0, configured - epochs_reached(t))
        elif t.state == TrialState.PRUNED:
            s.pruned_unknown += 1
    s.running = s.states.get("RUNNING", 0)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and (ends or s.running):
        end = max(ends) if ends else min(starts)
        if s.running:
            end = max(end, now or dt.datetime.now())
        s.wall_seconds = max(0.0, (end - min(starts)).total_seconds())
    return s
