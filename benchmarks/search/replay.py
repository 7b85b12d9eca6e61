"""Replay Optuna studies against a table of learning curves instead of training.

A replay is a real Optuna study (in-memory storage, ask/tell): the real sampler proposes a
configuration of the tabulated grid, and every epoch the tabulated value is reported with
``trial.report`` and the real pruner decides with ``trial.should_prune``, exactly as cnnopt's
objective does (the last epoch is never pruned). Only the training is replaced by a table look-up,
so hundreds of studies per variant run in seconds.

Budget and cost: a study may train ``budget`` epochs in all (120 = 12 full trials of 10 epochs).
A trial cut by the budget mid-way does not complete. With deduplication, a configuration the study
already trained is not trained again: the trial gets the earlier trial's intermediate values and
outcome (COMPLETE with its value, or PRUNED at the same step) at no cost, and when every
configuration of the grid has been tried the study stops. Without deduplication a repeat trains
again, with the next training seed of the table (the first training of every configuration in a
replay uses the replay's own training seed), and costs its epochs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from benchmarks.search.tabulate import config_key

MAX_TRIALS = 2000  # a guard only: a deduplicated study stops when its grid is exhausted


class Table:
    """The tabulated curves, indexed by configuration and training seed."""

    def __init__(
        self, data: dict[str, Any], metric: str = "val_accuracy", seeds: list[int] | None = None
    ):
        self.meta = data.get("meta", {})
        self.grid: dict[str, list] = {k: list(v) for k, v in self.meta["grid"].items()}
        self.epochs: int = int(self.meta["epochs"])
        self.metric = metric
        self.curves: dict[str, dict[int, list[float]]] = {}
        self.seconds: dict[str, dict[int, list[float]]] = {}
        for run in data["runs"].values():
            key = config_key(run["config"])
            eps = run["epochs"]
            if len(eps) < self.epochs:
                continue
            self.curves.setdefault(key, {})[int(run["seed"])] = [e[metric] for e in eps]
            self.seconds.setdefault(key, {})[int(run["seed"])] = [e["seconds"] for e in eps]
        # An epoch's price on the seconds axis: the configuration's median tabulated epoch time
        # (over its epochs and seeds). Wall-clock epochs on a shared CPU vary 10x with the load
        # of the moment; the median keeps what the configuration costs (batch size, width).
        for by_seed in self.seconds.values():
            med = statistics.median(x for secs in by_seed.values() for x in secs)
            for s in by_seed:
                by_seed[s] = [med] * self.epochs
        n_configs = math.prod(len(v) for v in self.grid.values())
        # only seeds tabulated for the whole grid: a replay must be able to draw any configuration
        self.seeds = sorted(
            s
            for s in {s for c in self.curves.values() for s in c}
            if sum(s in c for c in self.curves.values()) == n_configs
        )
        if seeds is not None:  # replay on these training seeds only (e.g. held-out curves)
            self.seeds = [s for s in self.seeds if s in seeds]
        if not self.seeds:
            raise ValueError("the table has no training seed complete for the whole grid")
        self.n_configs = n_configs

    def final(self, key: str, seed: int) -> float:
        return self.curves[key][seed][-1]

    def ceiling(self) -> float:
        """The best configuration's final value, averaged over the training seeds."""
        return max(
            sum(self.curves[k][s][-1] for s in self.seeds) / len(self.seeds) for k in self.curves
        )

    def default_target(self, top: int = 3) -> float:
        """A target near the grid's ceiling: the seed-mean final value of the ``top``-th best
        configuration, so a few configurations reach it and most do not."""
        means = sorted(
            (sum(self.curves[k][s][-1] for s in self.seeds) / len(self.seeds) for k in self.curves),
            reverse=True,
        )
        return means[min(top, len(means)) - 1]


# -- variants ------------------------------------------------------------------------------------


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """As cnnopt's ``Study.make_sampler`` builds them (TPE: Optuna 5's defaults, 5 random
    startup trials)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler {name!r} is not tpe or random")


PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    # cnnopt's default today: rungs at epochs 1, 2, 4, 8, the top half goes on
    "sh1": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=2
    ),
    # the first rung later: epochs 2, 4, 8 / 3, 6
    "sh2": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=2, reduction_factor=2
    ),
    "sh3": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=3, reduction_factor=2
    ),
    # no decision at a rung until 4 trials have reached it (the first trials are never pruned
    # against a single rival)
    "sh1_boot4": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=2, bootstrap_count=4
    ),
    "sh3_boot2": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=3, reduction_factor=2, bootstrap_count=2
    ),
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=epochs, reduction_factor=2
    ),
    "hyperband3": lambda epochs: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=epochs, reduction_factor=3
    ),
    "median_w3": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    "median_w5": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}


@dataclass(frozen=True)
class Variant:
    sampler: str  # tpe | random
    pruner: str  # a key of PRUNERS
    dedup: bool

    @property
    def name(self) -> str:
        return f"{self.sampler}+{self.pruner}" + ("+dedup" if self.dedup else "")


# -- one replay ----------------------------------------------------------------------------------


@dataclass
class Replay:
    """What one replayed study did: a trace of (cumulative epochs, cumulative seconds, best so
    far) after every trial, and its figures."""

    variant: str
    seed: int
    budget: int
    trials: int = 0
    epochs: int = 0  # epochs trained (cost), at most the budget
    seconds: float = 0.0  # tabulated seconds of those epochs
    best: float = -math.inf  # best final value of a COMPLETE trial within the budget
    best_key: str | None = None
    duplicates: int = 0  # trials whose configuration the study had already trained
    duplicate_epochs: int = 0  # epochs trained on such repeats (0 with deduplication)
    pruned: int = 0
    exhausted: bool = False  # deduplicated, and every configuration has been tried
    trace: list[tuple[int, float, float]] = field(default_factory=list)
    # per trial: configuration, final state (COMPLETE, PRUNED, FAIL when cut by the budget),
    # epochs trained (0 for a copy)
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def best_at(self, epochs: float) -> float:
        """Best value reached with at most ``epochs`` trained (-inf before the first)."""
        best = -math.inf
        for e, _s, b in self.trace:
            if e > epochs:
                break
            best = b
        return best

    def best_at_seconds(self, seconds: float) -> float:
        best = -math.inf
        for _e, s, b in self.trace:
            if s > seconds:
                break
            best = b
        return best

    def epochs_to(self, target: float) -> float:
        """Epochs trained when the best first reached ``target``; inf if never within budget."""
        for e, _s, b in self.trace:
            if b >= target:
                return e
        return math.inf

    def seconds_to(self, target: float) -> float:
        for _e, s, b in self.trace:
            if b >= target:
                return s
        return math.inf


def _suggest(trial: optuna.Trial, grid: dict[str, list]) -> dict[str, Any]:
    # define-by-run, as a study file's space() would write R2's grid
    return {k: trial.suggest_categorical(k, v) for k, v in grid.items()}


def replay(
    table: Table,
    variant: Variant,
    seed: int,
    budget: int = 120,
) -> Replay:
    """Run one study of ``variant`` against ``table`` with sampler seed ``seed``; the first
    training of each configuration uses training seed ``table.seeds[seed % len(table.seeds)]``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        # a fixed name: HyperbandPruner assigns brackets by a hash of the study name and trial
        # number, and Optuna's default name is a fresh UUID, which made its replays irreproducible
        study_name=f"replay-{variant.name}-{seed}",
        direction="maximize",
        sampler=make_sampler(variant.sampler, seed),
        pruner=PRUNERS[variant.pruner](table.epochs),
    )
    out = Replay(variant.name, seed, budget)
    first_seed = seed % len(table.seeds)
    trained: dict[str, int] = {}  # configuration -> times trained in this study
    outcome: dict[str, tuple[list[float], optuna.trial.TrialState]] = {}  # first result
    while out.epochs < budget and out.trials < MAX_TRIALS:
        if variant.dedup and len(outcome) >= table.n_configs:
            out.exhausted = True
            break
        trial = study.ask()
        key = config_key(_suggest(trial, table.grid))
        out.trials += 1
        if key in trained:
            out.duplicates += 1
        if variant.dedup and key in outcome:
            values, state = outcome[key]
            for step, v in enumerate(values, 1):
                trial.report(v, step)
            study.tell(trial, values[-1] if state == optuna.trial.TrialState.COMPLETE else None,
                       state=state)  # fmt: skip
            if state == optuna.trial.TrialState.PRUNED:
                out.pruned += 1
            out.log.append((key, state.name, 0))
            continue
        n = trained.get(key, 0)
        trained[key] = n + 1
        train_seed = table.seeds[(first_seed + n) % len(table.seeds)]
        epochs_before = out.epochs
        values, state = train_trial(
            study, trial, key, table.curves[key][train_seed], table.seconds[key][train_seed], out
        )
        if n > 0:
            out.duplicate_epochs += out.epochs - epochs_before
        if state != optuna.trial.TrialState.FAIL:
            outcome.setdefault(key, (values, state))
    return out


def train_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    key: str,
    curve: list[float],
    seconds: list[float],
    out: Replay,
    prune: bool = True,
) -> tuple[list[float], optuna.trial.TrialState]:
    """'Train' one asked trial on a tabulated curve, as cnnopt's objective trains: report every
    epoch, ask the pruner after each but the last, stop where the budget ends (the trial then
    never completes: FAIL, no value). Tells the study, updates ``out`` (cost, best, trace, log)
    and returns the values reported and the final state. Every replay (grid, pool) goes through
    here, so the budget and pruning rules cannot drift apart between them. ``prune=False`` is a
    warm start: the pruner is still asked (successive halving records rung values inside
    ``should_prune``) and its answer ignored, as cnnopt's objective does."""
    epochs = len(curve)
    values: list[float] = []
    state = optuna.trial.TrialState.COMPLETE
    for step, v in enumerate(curve, 1):
        if out.epochs >= out.budget:
            state = optuna.trial.TrialState.FAIL  # cut by the budget: never completes
            break
        out.epochs += 1
        out.seconds += seconds[step - 1]
        values.append(v)
        trial.report(v, step)
        if step < epochs and trial.should_prune() and prune:
            state = optuna.trial.TrialState.PRUNED
            break
    if state == optuna.trial.TrialState.FAIL:
        study.tell(trial, state=state)
    elif state == optuna.trial.TrialState.PRUNED:
        study.tell(trial, state=state)
        out.pruned += 1
    else:
        study.tell(trial, values[-1])
        if values[-1] > out.best:
            out.best, out.best_key = values[-1], key
    out.trace.append((out.epochs, out.seconds, out.best))
    out.log.append((key, state.name, len(values)))
    return values, state


def replay_many(
    table: Table, variants: list[Variant], seeds: range | list[int], budget: int = 120,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, list[Replay]]:  # fmt: skip
    """Every variant on every seed (same seed = same sampler seed and training seed: paired)."""
    import time

    out: dict[str, list[Replay]] = {}
    for v in variants:
        t0 = time.perf_counter()
        out[v.name] = [replay(table, v, s, budget) for s in seeds]
        log(f"{v.name}: {len(seeds)} replays in {time.perf_counter() - t0:.1f}s")
    return out
