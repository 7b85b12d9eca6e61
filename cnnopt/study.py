"""Load and validate a study file.

A study file is plain Python (as nanoGPT's config files are): module-level assignments are the
study's settings, and an optional ``space(trial)`` function samples the search space and returns a
dict of flat config keys. Settings are either study settings (StudySettings: name, metric, sampler,
pruner, ...) or fixed values of any RunConfig key (dataset, family, epochs, ...). Anything else is
rejected with the file and key named. ``--set key=value`` overrides apply on top, with the same
checks.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import inspect
import sys
import traceback
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from cnnopt.config import FIELD_TYPES, KEY_SECTION, RunConfig, coerce
from cnnopt.cost import COSTS
from cnnopt.errors import CnnoptError, StudyFileError
from cnnopt.pareto import RULES, RungPruner, rungs
from cnnopt.sampling import PerTrialSeedSampler

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "nsgaii")
PRUNERS = ("median", "hyperband", "successive_halving", "percentile", "none")
METRICS = (
    "val_accuracy",
    "val_loss",
    "val_subset_accuracy",
    "val_micro_f1",
    "val_macro_f1",
    "val_custom_accuracy",
)


@dataclass
class StudySettings:
    """Settings of the study itself (as opposed to the run configuration of its trials)."""

    name: str = ""
    metric: str = "val_accuracy"  # what trial.report() and the objective return
    direction: str = "maximize"
    sampler: str = "tpe"
    # Default: TPE + successive halving whose first rung comes at 30% of `epochs` (epoch 3 of 10),
    # then every doubling. Chosen by replaying real Optuna studies against a table of learning
    # curves (R2's 27-configuration grid x 10 epochs x 3 training seeds; `cnnopt bench --section
    # search`): pruning from epoch 1 (Ray Tune's ASHA, and cnnopt's earlier default) lost 0.27
    # points of best validation accuracy within a 120-epoch budget against no pruning at all,
    # because on FashionMNIST the configurations that end best are often behind after one epoch;
    # a first rung at epoch 3 pruned without that loss. Chosen on one set of seeds, reported on
    # fresh ones (README, Performance).
    pruner: str = "successive_halving"
    n_startup_trials: int = 5  # sampler: random trials before TPE; pruner: trials before pruning
    n_warmup_steps: int = 1  # median/percentile pruner: never prune before this epoch
    # successive halving: epochs before the first rung (None: 30% of epochs, at least 1);
    # hyperband: its smallest budget (None: 1)
    min_resource: int | None = None
    reduction_factor: int = 2  # hyperband / successive halving: keep the top 1/factor per rung
    n_trials: int = 20  # default for `cnnopt run` without --n-trials
    timeout: float | None = None
    # Stop starting trials once the run has trained this many epochs (each trial's epochs as
    # trained: a pruned trial counts the epochs it ran, a copy of a trained configuration none).
    # Epochs, not trials, are what a study spends: under a trial count a pruner's savings are
    # lost, under an epoch budget they buy more trials, as they do under a timeout; unlike a
    # timeout it does not move with the machine's load. With it and without --n-trials, the
    # budget (and the timeout) bound the run, not `n_trials`.
    epoch_budget: int | None = None
    seed: int = 0
    retry_failed: int = 1  # re-runs (same params) of a trial whose worker died
    checkpoint: bool = False  # per-epoch checkpoints so a retried trial resumes, not restarts
    # A configuration the study already trained is not trained again: every trial trains with the
    # study seed, so a repeat reproduces its original's curve exactly and only spends epochs. The
    # repeat copies the result (``duplicate_of``); False trains repeats with a fresh seed each,
    # for users who want them as noise estimates. See cnnopt/dedup.py.
    deduplicate: bool = True
    # where trial artifacts go: a folder or s3://bucket/prefix; "none": off (cnnopt/artifacts.py)
    artifacts: str | None = None  # default: storage/artifacts/<study>/
    # params of trials to run first (warm starts), when the study is new; they are trained to
    # the end, never pruned
    enqueue: tuple[dict, ...] = ()
    # Budgets (cnnopt/cost.py): a configuration over any of them is never trained. It is recorded
    # as pruned at epoch 0 with its cost and an Optuna constraint violation, so it costs no
    # epoch, is never the best trial, and the sampler learns to stay inside (TPE ranks
    # infeasible trials last whatever their state).
    max_params: int | None = None
    max_flops: int | None = None  # forward FLOPs per image (a multiply-add counts 2)
    max_latency_ms: float | None = None  # median forward time of a batch on the trial's device
    latency_batch: int = 1  # the batch size that latency is measured at
    # Pareto studies: the metric first, then one or two costs (params, flops, latency_ms), e.g.
    # ["val_accuracy", "flops"]; empty: a single-objective study of `metric`. Directions default
    # to `direction` for the metric and minimize for costs.
    objectives: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()
    # how a Pareto study's pruner orders the trials at a rung (cnnopt/pareto.py): MO-ASHA's
    # non-dominated sorting ("nds") or successive halving among no costlier trials ("cheaper")
    pareto_rule: str = "nds"


# user attr of the trials `enqueue` puts first: the objective never prunes them
WARM_START = "warm_start"

# Where a trial's configuration came from, said with every result built on it (run summary,
# status, export, `cnnopt train`): a model the search found and one a person wrote down are
# different claims about the search, and a reader cannot tell them apart by the numbers.
SOURCE_SEARCH = "found by the search"
SOURCE_STUDY_FILE = "written into the study file (enqueue)"
SOURCE_ENQUEUED = "enqueued by hand"


def trial_source(trial: Any) -> str:
    """``SOURCE_STUDY_FILE`` for the study file's warm starts, ``SOURCE_ENQUEUED`` for other
    trials whose params were fixed before they ran (``study.enqueue_trial`` outside cnnopt),
    else ``SOURCE_SEARCH``. A re-queued retry of a failed trial has fixed params too, but the
    sampler drew them: it keeps its original's source (cnnopt keeps WARM_START on retries)."""
    if trial.user_attrs.get(WARM_START):
        return SOURCE_STUDY_FILE
    system = getattr(trial, "system_attrs", None) or {}
    if "fixed_params" in system and "failed_trial" not in system:
        return SOURCE_ENQUEUED
    return SOURCE_SEARCH


STUDY_TYPES: dict[str, Any] = typing.get_type_hints(StudySettings)
STUDY_CHOICES = {
    "sampler": SAMPLERS,
    "pruner": PRUNERS,
    "direction": ("maximize", "minimize"),
    "metric": METRICS,
    "pareto_rule": RULES,
}

SpaceFn = Callable[[optuna.Trial], dict[str, Any]]


def _check_study_value(key: str, value: Any, where: str) -> Any:
    value = coerce(key, value, STUDY_TYPES[key], where)
    allowed = STUDY_CHOICES.get(key)
    if allowed and value not in allowed:
        raise StudyFileError(f"{where}: {key}={value!r} is not one of {', '.join(allowed)}")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value`` as the key's type reads it, so that every value a setting
    documents is accepted as written: ``pruner=none`` and ``batchnorm=none`` are the strings their
    settings name, ``timeout=none`` is None, ``hflip=true`` a bool, ``filters=[32,64]`` a list,
    ``name=2024`` a string. Keys unknown here are parsed as Python literals (and rejected later,
    with the key named)."""
    if "=" not in text:
        raise StudyFileError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    return key, parse_value(raw, STUDY_TYPES.get(key) or FIELD_TYPES.get(key))


def parse_value(raw: str, tp: Any = None) -> Any:
    """A command-line value for a setting of annotated type ``tp`` (None: not known)."""
    raw = raw.strip()
    text_setting = tp is str or str in typing.get_args(tp)
    optional = type(None) in typing.get_args(tp)
    if raw.lower() in ("none", "null") and (optional or not text_setting):
        return None
    try:
        literal = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        literal = raw  # not a Python literal: the text itself
    if text_setting:
        # a string setting takes the text as written (quotes optional): `pruner=none` is one of
        # its values, not Python's None, and `name=2024` is a name
        return literal if isinstance(literal, str) else raw
    if literal is raw:
        return {"true": True, "false": False}.get(raw.lower(), raw)
    return literal


def first_rung(min_resource: int | None, epochs: int) -> int:
    """Successive halving's first rung: as set, else 30% of the trial's epochs (at least 1)."""
    if min_resource is not None:
        return min_resource
    return max(1, round(0.3 * epochs))


@dataclass
class Study:
    """A loaded study file: settings, fixed config values and the search space."""

    path: Path
    settings: StudySettings
    fixed: dict[str, Any]  # flat RunConfig keys fixed by the file or --set
    space: SpaceFn | None
    sha256: str
    # --set values of run-config keys: they win over space(), so `--set batch_size=64` pins a
    # searched parameter (the sampler returns the pinned value, so trial.params show it too)
    pinned: dict[str, Any] = dataclasses.field(default_factory=dict)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # every --set, as given

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
        path = Path(path)
        if not path.is_file():
            raise StudyFileError(f"study file not found: {path}")
        source = path.read_bytes()
        module = _exec_file(path)
        settings: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        space = None
        for key, value in vars(module).items():
            if key.startswith("_") or isinstance(value, types.ModuleType | type):
                continue
            if key == "space":
                if not callable(value):
                    raise StudyFileError(f"{path}: space must be a function space(trial) -> dict")
                space = value
                continue
            if callable(value):  # imported helpers
                continue
            _assign(key, value, settings, fixed, str(path))
        for key, value in (overrides or {}).items():
            _assign(key, value, settings, fixed, "--set")
        settings.setdefault("name", path.stem)
        _check_objectives(settings, str(path))
        pinned = {k: fixed[k] for k in (overrides or {}) if k in fixed}
        study = cls(
            path,
            StudySettings(**settings),
            fixed,
            space,
            hashlib.sha256(source).hexdigest(),
            pinned,
            dict(overrides or {}),
        )
        # Resolve the defaults once now, so that a bad fixed value fails at load, not in a worker.
        study.base_config()
        if space is not None and len(inspect.signature(space).parameters) != 1:
            raise StudyFileError(f"{path}: space must take exactly one argument (the trial)")
        for i, params in enumerate(study.settings.enqueue):
            if not isinstance(params, dict):
                raise StudyFileError(f"{path}: enqueue[{i}] must be a dict of params")
            try:
                with warnings.catch_warnings():
                    # FixedTrial only warns about a value outside its distribution: make it an error
                    warnings.simplefilter("error", UserWarning)
                    study.config_from_params(params)
            except (ValueError, UserWarning) as e:  # a missing param, or one out of range
                raise StudyFileError(f"{path}: enqueue[{i}]: {e}") from None
        return study

    # -- resolving trials ------------------------------------------------------------------------
    def base_config(self) -> RunConfig:
        flat = {"seed": self.settings.seed, "split_seed": self.settings.seed, **self.fixed}
        return RunConfig.from_flat(flat, where=str(self.path))

    def sample(self, trial: optuna.Trial | optuna.trial.FixedTrial) -> dict[str, Any]:
        """Run the search space on a trial; returns flat config keys."""
        if self.space is None:
            return {}
        try:
            values = self.space(trial)
        except (CnnoptError, optuna.TrialPruned):
            raise
        except Exception as e:
            if isinstance(trial, optuna.trial.FixedTrial):
                raise  # replaying stored params: the caller names what did not fit
            # a bug in the user's space() (a typo, a KeyError) hits every trial: one line naming
            # the file and line, so the run stops instead of crashing and respawning workers
            raise StudyFileError(f"{self._where(e)}: space() failed: {_one_line(e)}") from None
        if not isinstance(values, dict):
            raise StudyFileError(
                f"{self.path}: space() returned {type(values).__name__}, not a dict"
            )
        return values

    def resolve(self, trial: optuna.Trial | optuna.trial.FixedTrial) -> RunConfig:
        """Fixed settings, then the sampled values on top: the trial's full RunConfig."""
        flat = {"seed": self.settings.seed, "split_seed": self.settings.seed, **self.fixed}
        flat.update(self.sample(trial))
        flat.update(self.pinned)
        return RunConfig.from_flat(flat, where=f"{self.path}: space()")

    def config_from_params(self, params: dict[str, Any]) -> RunConfig:
        """Rebuild a stored trial's RunConfig from its params alone (replays space() on them)."""
        return self.resolve(optuna.trial.FixedTrial(params))

    # -- Optuna objects --------------------------------------------------------------------------
    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded per trial from the study seed (or ``seed``) and the trial's
        number, so that workers and runners sharing a study never draw the same stream
        (``cnnopt.sampling``); quasi-random sampling shares its one sequence instead."""
        seed = self.settings.seed if seed is None else seed
        if self.settings.sampler == "qmc":
            return self._pinned(self._base_sampler(seed))
        return PerTrialSeedSampler(lambda s: self._pinned(self._base_sampler(s)), seed)

    def _pinned(self, base: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
        if not self.pinned:
            return base
        # a pinned key that space() samples under the same name: the sampler returns the pinned
        # value, so the stored params say what was trained
        return optuna.samplers.PartialFixedSampler(self.pinned, base)

    def _base_sampler(self, seed: int | None) -> optuna.samplers.BaseSampler:
        # Budgets reach the samplers as Optuna constraints that the objective sets on each trial
        # (trial.set_constraint; Optuna 5 deprecates constraints_func for it), so no sampler
        # needs a constraints_func here: TPE, NSGA-II and GP read trial.constraints themselves.
        s = self.settings
        seed = s.seed if seed is None else seed
        if s.sampler == "nsgaii":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if s.sampler == "tpe":
            # Optuna 5's TPE defaults to multivariate + constant_liar, which suits parallel workers.
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials)
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials)
        if s.sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)

    # -- objectives, budgets ---------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return bool(self.settings.objectives)

    @property
    def directions(self) -> list[str]:
        """One per value the objective returns (Optuna's ``directions``)."""
        return list(self.settings.directions) or [self.settings.direction]

    @property
    def cost_objectives(self) -> tuple[str, ...]:
        return tuple(self.settings.objectives[1:])

    @property
    def limits(self) -> dict[str, float]:
        """The budgets that are set, by cost name."""
        s = self.settings
        limits = {"params": s.max_params, "flops": s.max_flops, "latency_ms": s.max_latency_ms}
        return {k: v for k, v in limits.items() if v is not None}

    @property
    def needs_cost(self) -> bool:
        """Is a trial's cost measured before training (a budget, or a cost objective)?"""
        return bool(self.limits or self.cost_objectives)

    @property
    def needs_latency(self) -> bool:
        return "latency_ms" in self.limits or "latency_ms" in self.cost_objectives

    def make_rung_pruner(self) -> RungPruner | None:
        """A Pareto study's pruner (None: it does not prune)."""
        s = self.settings
        if not self.multi_objective or s.pruner == "none":
            return None
        epochs = self.base_config().train.epochs
        return RungPruner(
            rungs(first_rung(s.min_resource, epochs), s.reduction_factor, epochs),
            s.reduction_factor,
            s.direction == "maximize",
            s.pareto_rule,
        )

    def make_pruner(self) -> optuna.pruners.BasePruner:
        s = self.settings
        epochs = self.base_config().train.epochs
        if self.multi_objective:  # Optuna's pruners cannot: the objective runs make_rung_pruner
            return optuna.pruners.NopPruner()
        if s.pruner == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=s.n_startup_trials, n_warmup_steps=s.n_warmup_steps
            )
        if s.pruner == "percentile":
            return optuna.pruners.PercentilePruner(
                25.0, n_startup_trials=s.n_startup_trials, n_warmup_steps=s.n_warmup_steps
            )
        if s.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=s.min_resource or 1,
                max_resource=epochs,
                reduction_factor=s.reduction_factor,
            )
        if s.pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=first_rung(s.min_resource, epochs),
                reduction_factor=s.reduction_factor,
            )
        return optuna.pruners.NopPruner()

    def _where(self, e: BaseException) -> str:
        """``file:line`` of the deepest frame of ``e`` inside the study file (else the file)."""
        line = None
        for frame in traceback.extract_tb(e.__traceback__):
            if Path(frame.filename).resolve() == self.path.resolve():
                line = frame.lineno
        return f"{self.path}:{line}" if line else str(self.path)

    @property
    def name(self) -> str:
        return self.settings.name

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "abs_path": str(self.path.resolve()),
            "sha256": self.sha256,
            "settings": dataclasses.asdict(self.settings),
            "fixed": dict(self.fixed),
            "overrides": dict(self.overrides),
        }


def _check_objectives(settings: dict[str, Any], where: str) -> None:
    """A Pareto study's objectives, directions, sampler and pruner, checked together (each is
    fine alone; some combinations Optuna or cnnopt cannot run). Fills in ``metric`` and
    ``directions`` so that the rest of cnnopt reads them from one place."""
    for key in ("max_params", "max_flops", "max_latency_ms", "latency_batch", "epoch_budget"):
        value = settings.get(key)
        if value is not None and value <= 0:
            raise StudyFileError(f"{where}: {key}={value!r} must be positive")
    objectives = settings.get("objectives", ())
    directions = settings.get("directions", ())
    if not objectives:
        if directions:
            raise StudyFileError(f"{where}: directions={list(directions)!r} needs objectives")
        return
    first, costs = objectives[0], objectives[1:]
    if first not in METRICS:
        raise StudyFileError(
            f"{where}: objectives={list(objectives)!r}: the first must be the metric "
            f"({', '.join(METRICS)})"
        )
    if "metric" in settings and settings["metric"] != first:
        raise StudyFileError(
            f"{where}: metric={settings['metric']!r} but objectives starts with {first!r}"
        )
    if (
        not 1 <= len(costs) <= 2
        or any(c not in COSTS for c in costs)
        or len(set(costs)) < len(costs)
    ):
        raise StudyFileError(
            f"{where}: objectives={list(objectives)!r}: after the metric, one or two different "
            f"costs of {', '.join(COSTS)}"
        )
    if directions:
        if len(directions) != len(objectives):
            raise StudyFileError(
                f"{where}: directions={list(directions)!r} has {len(directions)} values for "
                f"{len(objectives)} objectives"
            )
        for d in directions:
            if d not in ("maximize", "minimize"):
                raise StudyFileError(f"{where}: directions: {d!r} is not maximize or minimize")
        if any(d != "minimize" for d in directions[1:]):
            raise StudyFileError(
                f"{where}: directions={list(directions)!r}: a cost is minimized (a larger model "
                "for its own sake is what a budget is for)"
            )
        settings["direction"] = directions[0]
    direction = settings.get("direction", "maximize")
    settings["metric"] = first
    settings["directions"] = (direction, *("minimize" for _ in costs))
    pruner = settings.get("pruner", "successive_halving")
    if pruner not in ("successive_halving", "none"):
        raise StudyFileError(
            f"{where}: pruner={pruner!r}: a Pareto study prunes with successive halving's "
            "rungs (cnnopt/pareto.py) or not at all (none); Optuna's pruners need trial.report, "
            "which multi-objective studies refuse"
        )
    if settings.get("sampler") == "cmaes":
        raise StudyFileError(f"{where}: sampler='cmaes' cannot run a multi-objective study")


def _assign(key: str, value: Any, settings: dict, fixed: dict, where: str) -> None:
    if key in STUDY_TYPES:
        settings[key] = _check_study_value(key, value, where)
    elif key in KEY_SECTION:
        fixed[key] = coerce(key, value, FIELD_TYPES[key], where)
    else:
        known = sorted([*STUDY_TYPES, *KEY_SECTION])
        close = [k for k in known if k.startswith(key[:3])][:4]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise StudyFileError(f"{where}: unknown setting {key!r}{hint}")


def _exec_file(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"cnnopt_study_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise StudyFileError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # the file's folder on the import path while it loads, so that a study file can take its
    # space from a sibling (``from fashion_cnn_bn import space``) instead of copying it
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise StudyFileError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # the file's own code failed: say where, in one line
        raise StudyFileError(f"{path}: failed to load: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(folder)
    return module


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
