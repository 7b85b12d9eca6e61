"""Live studies on a study's whole space: the replays' confirmation, with real training.

Four variants, each given the same budget of trained epochs (120: twelve full trials of 10) on the
search benchmark's 12k / 3k subset, without the study file's warm starts:

- ``default``: ``cnnopt run`` with the study file's own sampler and pruner (TPE, successive
  halving, deduplication);
- ``random``: ``cnnopt run --set sampler=random --set pruner=none`` (R2's method in cnnopt);
- ``ray_asha``: real Ray Tune, random search through the study file's own ``space()``
  (``OptunaSearch`` with Optuna's RandomSampler, define-by-run) under ``ASHAScheduler`` as in Ray's
  PyTorch tutorial that R2 followed, with cnnopt's trainer inside the Ray trainable;
- ``ray_tpe_asha``: the same with ``OptunaSearch``'s own default sampler, TPE (seeded): the
  strongest Ray peer a Ray user would configure for this space.

Three more, run only when asked (``--variants``): ``tpe_sh1`` (the default with rungs from epoch
1), ``noaug`` (the default with the study file's augmentation off: what the final recipe's crop,
mirror and mirror TTA cost a 10-epoch trial on 12k images) and ``warm`` (the default with the
study file's warm starts, as a user runs it: what they are worth).

Every study's seed is the sampler's seed and the training seed, so a seed pairs the variants on
the same data split (``split_seed`` is the benchmark's, not the seed). A pair counts only where it
is clean (``pair_fault``): both studies record the hardware they ran on (CPU model, torch threads),
the same, and where the two variants start from the same configuration (the first trial of TPE's
startup, random search and Ray's searchers is the same draw), the same first-trial curve to the
last digit. A curve reproduces to the last digit only on the same kind of CPU with the same thread
count, so a pair across environments mixes a machine difference into the search difference. The cnnopt variants run the
real command, one worker, stopped with SIGTERM (as a user stops it) once its journal shows the
budget trained (a copy from deduplication costs none); the trial the budget cuts counts as never
completed, as in the replays. Records are written after every study, so an interrupted run resumes
with the next study.

    python -m benchmarks.search.live --out benchmarks/search/tables/fashion_live.json \\
        --data-dir ../shared/data/fashion-mnist --seeds 101 102 103 104 105 106 107 108

Eight seeds, not the five the benchmark asks for at least: the seeds were extended after the
first five had been seen (their t intervals included zero), decided before seeds 106 to 108 had
results; every study run is in the table.

Ray Tune is the optional ``bench`` extra; without it the Ray variants are skipped with a message.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna

from benchmarks.search import ray_asha
from benchmarks.search.pool import STUDY_FILE, load_study
from benchmarks.search.replay import Replay
from benchmarks.search.tabulate import (
    EPOCHS,
    SPLIT_SEED,
    TRAIN_SUBSET,
    VAL_FRACTION,
    command_line,
    config_key,
    cpu_split,
    load_table,
    save_table,
)

TABLE = Path(__file__).with_name("tables") / "fashion_live.json"
BUDGET = 120
# the cnnopt variants: `cnnopt run` settings on top of the study file's own
CNNOPT_VARIANTS: dict[str, list[str]] = {
    "default": [],
    "random": ["sampler=random", "pruner=none"],
    # a candidate, not run by default: the default's TPE with rungs from epoch 1
    "tpe_sh1": ["min_resource=1"],
    # a measurement, not run by default: the default with the study file's augmentation off
    # (no crop, no mirror, no mirror TTA; cosine schedule and label smoothing stay), to see how
    # much of a 10-epoch trial's accuracy on 12k images the augmentation costs
    "noaug": ["crop_padding=0", "hflip=false", "tta_flip=false"],
    # a measurement, not run by default: the default as a user runs the shipped study file, its
    # warm starts first (trained to the end, in the budget like any trial)
    "warm": [],
}
WITH_WARM_STARTS = ("warm",)  # every other variant runs without the study file's warm starts
# Ray Tune variants: OptunaSearch's sampler under the same ASHA
RAY_VARIANTS: dict[str, str] = {"ray_asha": "random", "ray_tpe_asha": "tpe"}
VARIANTS = (*CNNOPT_VARIANTS, *RAY_VARIANTS)
REQUIRED = ("default", "random", "ray_asha", "ray_tpe_asha")  # the comparison the benchmark owes
# variants whose first trial is the default's (same configuration, seed and training): their
# first-trial curves must agree to the last digit for a pair to count
SAME_FIRST_TRIAL = ("random", "ray_asha", "ray_tpe_asha", "tpe_sh1")
LABELS = {
    "default": "cnnopt default (tpe+sh3+dedup)",
    "random": "random search, no pruning",
    "ray_asha": "Ray Tune random + ASHA",
    "ray_tpe_asha": "Ray Tune TPE + ASHA",
    "tpe_sh1": "cnnopt TPE + SH from epoch 1",
    "noaug": "cnnopt default, trials without augmentation",
    "warm": "cnnopt default with the study file's warm starts",
}


def _benchmark_sets(epochs: int, train_subset: int | None, warm_starts: bool = False) -> list[str]:
    """The search benchmark's protocol, as ``--set`` values (no warm starts unless asked)."""
    sets = [f"epochs={epochs}", f"train_subset={train_subset}", f"val_fraction={VAL_FRACTION}",
            f"split_seed={SPLIT_SEED}"]  # fmt: skip
    return sets if warm_starts else [*sets, "enqueue=[]"]


def curve(t: optuna.trial.FrozenTrial) -> list[float]:
    """A trial's metric epoch by epoch: its intermediate values, or in a Pareto study (where
    Optuna refuses ``trial.report``) the ``intermediate`` user attribute cnnopt stores instead."""
    if t.intermediate_values:
        return [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
    steps = t.user_attrs.get("intermediate") or {}
    return [float(steps[k]) for k in sorted(steps, key=int)]


def trained_epochs(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """Epochs a study has trained: every reported epoch, except on deduplication's copies."""
    return sum(len(curve(t)) for t in trials if "duplicate_of" not in t.user_attrs)


def _trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    history = t.user_attrs.get("history") or []
    return {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        "values": curve(t),
        "seconds": [h.get("seconds") for h in history],
        "duplicate_of": t.user_attrs.get("duplicate_of"),
        "params_count": t.user_attrs.get("params_count"),
        "flops": t.user_attrs.get("flops"),  # a Pareto study's cost objective
        # where it ran: curves reproduce to the last digit, and seconds compare, only on the same
        # kind of hardware with the same thread count
        "hardware": {k: v for k, v in (t.user_attrs.get("hardware") or {}).items()
                     if k in ("cpu", "gpu", "torch_threads")},
    }  # fmt: skip


def run_cnnopt(
    variant: str,
    seed: int,
    *,
    study_file: str,
    budget: int,
    epochs: int,
    train_subset: int | None,
    data_dir: str | None,
    workdir: Path,
    log: Callable[[str], None],
    poll_s: float = 2.0,
    variant_sets: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One live study of a cnnopt variant: ``cnnopt run`` until ``budget`` epochs are trained,
    then stopped as a user stops it (SIGTERM: the trial in progress is interrupted at its epoch's
    end); returns its trials in order. A study resumed from its journal goes on where it was.
    ``variant_sets``: the variant's ``--set`` values, when it is not one of CNNOPT_VARIANTS (the
    Pareto live studies, benchmarks/search/pareto_live.py)."""
    name = f"live-{variant}-{seed}"
    url = str(workdir / f"{name}.journal")
    sets = _benchmark_sets(epochs, train_subset, warm_starts=variant in WITH_WARM_STARTS)
    own = CNNOPT_VARIANTS[variant] if variant_sets is None else variant_sets
    sets += [*own, f"name={name}"]
    if data_dir:
        sets.append(f"data_dir={data_dir}")
    done = -1  # finished trials at the last progress line

    def progress(trials: list[optuna.trial.FrozenTrial]) -> None:
        # a line per finished trial: a live study runs for up to an hour, often off a TTY
        nonlocal done
        finished = [t for t in trials if t.state.is_finished()]
        if len(finished) == done:
            return
        done = len(finished)
        values = [t.values[0] for t in finished if t.values]  # complete trials (the metric)
        best = f", best {max(values):.4f}" if values else ""
        log(f"{name}: {trained_epochs(trials)}/{budget} epochs, {done} trials finished{best}")

    while True:
        trials = _trials(url, name)
        spent = trained_epochs(trials)
        progress(trials)
        if spent >= budget:
            break
        # every trained trial costs at least an epoch: the rest of the budget bounds the trials
        # (a copy costs none; then another round)
        n = budget - spent
        cmd = [sys.executable, "-m", "cnnopt.cli", "run", study_file, "--workers", "1",
               "--n-trials", str(n), "--seed", str(seed), "--storage", url, "--no-progress"]  # fmt: skip
        for s in sets:
            cmd += ["--set", s]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        stopped = False
        while proc.poll() is None:
            time.sleep(poll_s)
            now = _trials(url, name)
            progress(now)
            if not stopped and trained_epochs(now) >= budget:
                proc.send_signal(signal.SIGTERM)
                stopped = True
        if proc.returncode != 0 and not stopped:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return [_trial_record(t) for t in sorted(trials, key=lambda t: t.number)]


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    if not Path(url).exists():
        return []
    try:
        return optuna.load_study(study_name=name, storage=_storage(url)).get_trials(deepcopy=False)
    except KeyError:  # the run has not created the study yet
        return []


def _storage(url: str):
    from cnnopt.storage import get_storage

    return get_storage(url)


_STUDIES: dict[tuple, Any] = {}  # the study file, loaded once per Ray actor


def _live_trainable(config: dict[str, Any], study_file, epochs, train_subset, data_dir, seed):
    """Ray's function trainable: the sampled params trained by cnnopt's trainer, as a cnnopt trial
    trains them (study seed as training seed), reported to Ray epoch by epoch."""
    import torch
    from ray import tune

    from cnnopt.errors import TrialFailed
    from cnnopt.train import fit, hardware

    torch.set_num_threads(1)  # the one CPU Ray was given
    hw = hardware("cpu")  # recorded with every epoch, as a cnnopt trial records it
    args = (study_file, epochs, train_subset, data_dir)
    if args not in _STUDIES:  # once per actor: Ray reuses it for every trial (reuse_actors)
        _STUDIES[args] = load_study(
            study_file, epochs=epochs, train_subset=train_subset, data_dir=data_dir
        )
    study = _STUDIES[args]
    cfg, split = cpu_split(study.config_from_params(config).replace(seed=seed))
    key = config_key(config)

    def on_epoch(stats) -> None:
        tune.report(
            {
                "val_accuracy": stats.metrics["val_accuracy"],
                "val_loss": stats.metrics["val_loss"],
                "seconds": stats.seconds,
                "config_key": key,
                "cpu": hw["cpu"],
                "torch_threads": hw["torch_threads"],
            }
        )

    try:
        fit(cfg, split, device="cpu", on_epoch=on_epoch)
    except TrialFailed:
        # a configuration that diverged (NaN loss) fails as a cnnopt trial fails: it keeps the
        # epochs it reported and the study goes on; an error would end Ray's trial the same way
        # but make the experiment look broken
        return


class _RaySpace:
    """OptunaSearch's define-by-run function: the study file's own ``space()``, whose sampled
    params Ray keeps as the trial's config. A picklable callable (Ray checkpoints its searcher);
    the loaded study file is rebuilt after unpickling."""

    def __init__(self, study_file: str, epochs: int, train_subset: int | None, data_dir):
        self.args = (study_file, epochs, train_subset, data_dir)
        self._study = None

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args, "_study": None}

    def __call__(self, trial) -> None:
        if self._study is None:
            f, e, n, d = self.args
            self._study = load_study(f, epochs=e, train_subset=n, data_dir=d)
        self._study.sample(trial)


def run_ray(
    seed: int,
    *,
    study_file: str,
    budget: int,
    epochs: int,
    train_subset: int | None,
    data_dir: str | None,
    log: Callable[[str], None],
    sampler: str = "random",
) -> list[dict[str, Any]]:
    """One live Ray Tune experiment: OptunaSearch over the study's space with ``sampler`` (random
    or tpe, seeded with the study seed) under ASHA (grace period 1, reduction factor 2, on
    validation loss as Ray's tutorial), stopped at ``budget`` epochs."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from cnnopt.sampling import trial_seed

    samplers = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
    if sampler not in samplers:
        raise ValueError(f"unknown Ray sampler {sampler!r} (known: {', '.join(samplers)})")
    variant = next(v for v, s in RAY_VARIANTS.items() if s == sampler)
    ray_asha.quiet_ray()
    # Ray runs trainables in worker processes with their own working directory
    study_file = str(Path(study_file).resolve())
    data_dir = str(Path(data_dir).resolve()) if data_dir else None
    space = _RaySpace(study_file, epochs, train_subset, data_dir)
    stopper = ray_asha.budget_stopper(budget, "val_loss")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory(prefix="cnnopt-ray-live-") as tmp:
            trainable = tune.with_parameters(
                _live_trainable, study_file=study_file, epochs=epochs, train_subset=train_subset,
                data_dir=data_dir, seed=seed,
            )  # fmt: skip
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": 1}),
                tune_config=tune.TuneConfig(
                    scheduler=ASHAScheduler(
                        metric="val_loss", mode="min", max_t=epochs, grace_period=1,
                        reduction_factor=2,
                    ),
                    search_alg=OptunaSearch(
                        space=space, metric="val_loss", mode="min",
                        # seeded as cnnopt seeds its trial 0 (cnnopt.sampling): the first trial
                        # is the cnnopt variants' first trial, so the pair can be checked
                        sampler=samplers[sampler](seed=trial_seed(seed, 0)),
                    ),
                    # no cap: the budget stopper ends it (a cap of `budget` trials ran out
                    # when diverged configurations, which train no epoch, used some up)
                    num_samples=-1,
                    # one actor for all trials: torch and cnnopt imported once, the data split
                    # loaded once (cnnopt.data caches it per process)
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"live-{variant}-{seed}", storage_path=tmp, stop=stopper, verbose=0
                ),
            )  # fmt: skip
            grid = tuner.fit()
            if grid.errors:  # a trainable that raised (not a diverged trial): a real bug
                raise RuntimeError(f"live Ray Tune study {seed} failed: {grid.errors[0]}")
            if stopper.used < budget:  # Ray ends fit() quietly on Ctrl-C: not a study to keep
                raise RuntimeError(
                    f"live Ray Tune study {seed} ended at {stopper.used} of {budget} epochs"
                )
    finally:
        ray.shutdown()
    # Ray's results in arrival order (one trial at a time), as trial records; a trial that ended
    # early is PRUNED, whether ASHA stopped it or it diverged (Ray does not tell the driver which)
    by_trial: dict[str, list[dict]] = {}
    for trial_id, result in stopper.results:
        by_trial.setdefault(trial_id, []).append(result)
    records = []
    for n, rows in enumerate(by_trial.values()):
        full = len(rows) == epochs
        records.append(
            {
                "number": n,
                "state": "COMPLETE" if full else "PRUNED",
                "params": rows[0].get("config") or {},
                "values": [r["val_accuracy"] for r in rows],
                "seconds": [r["seconds"] for r in rows],
                "duplicate_of": None,
                "config_key": rows[0]["config_key"],
                "hardware": {
                    "cpu": rows[0].get("cpu"),
                    "torch_threads": rows[0].get("torch_threads"),
                }
                if rows[0].get("cpu")
                else {},
            }
        )
    log(f"live-{variant}-{seed}: {len(records)} trials")
    return records


def to_replay(record: dict[str, Any], budget: int, epochs: int) -> Replay:
    """A live study as the replays' Replay: trials in order, the trial the budget cuts never
    completes, copies cost nothing."""
    out = Replay(record["variant"], int(record["seed"]), budget)
    for t in record["trials"]:
        if out.epochs >= budget:
            break
        out.trials += 1
        values = t["values"]
        copy = t.get("duplicate_of") is not None
        out.duplicates += copy
        take = 0 if copy else min(len(values), budget - out.epochs)
        secs = [s or 0.0 for s in t.get("seconds") or []]
        out.epochs += take
        out.seconds += sum(secs[:take])
        cut = not copy and take < len(values)
        # a trial interrupted after its last epoch (the run stopped at the budget) trained in full
        full = t["state"] in ("COMPLETE", "FAIL") and len(values) == epochs
        if full and not cut:
            if values[-1] > out.best:
                out.best, out.best_key = values[-1], t.get("config_key") or config_key(t["params"])
            state = "COMPLETE"
        elif cut:
            state = "FAIL"
        else:
            state = t["state"]
            out.pruned += state == "PRUNED"
        out.trace.append((out.epochs, out.seconds, out.best))
        out.log.append((t.get("config_key") or config_key(t["params"]), state, take))
    return out


def run_live(
    out: Path,
    *,
    variants: Iterable[str],
    seeds: Iterable[int],
    study_file: str = STUDY_FILE,
    budget: int = BUDGET,
    epochs: int = EPOCHS,
    train_subset: int | None = TRAIN_SUBSET,
    data_dir: str | None = None,
    command: str = "",
    workdir: Path | str | None = None,
    redo_unrecorded: bool = False,
    redo: Iterable[str] = (),
    redo_before: str | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Every (seed, variant) study the table at ``out`` lacks, seeds outer (a finished seed pairs
    its variants), saved after each. Several runs may share a table (one per core, with
    different seed orders): a study another run finished or holds is skipped. With
    ``redo_unrecorded``, a study the table holds without one hardware record (run before trials
    recorded it, or resumed on another machine) is run again and replaced: such a study pairs
    with no other (``pair_fault``). The studies of the variants in ``redo`` that the table held
    before this run started (or before ``redo_before``, an ISO time: a redo continued in a later
    session) are run again from scratch and replaced (a study drawn before the harness changed,
    say); one another run replaced after that time is kept."""
    started, redo = redo_before or _now(), set(redo)
    table = load_table(out)
    table.setdefault("studies", {})
    table.pop("runs", None)
    table["meta"] = {
        "what": f"live studies on {study_file}'s space, {budget} trained epochs each",
        "kind": "live",
        "command": command or table.get("meta", {}).get("command", ""),
        "study_file": study_file,
        "budget": budget,
        "epochs": epochs,
        "train_subset": train_subset,
        "val_fraction": VAL_FRACTION,
        "split_seed": SPLIT_SEED,
        "machine": platform.processor() or platform.machine(),
    }
    variants = list(variants)
    ray = [v for v in variants if v in RAY_VARIANTS]
    if ray and not ray_asha.available():
        log(f"Ray Tune is not installed (pip install '.[bench]'): {', '.join(ray)} skipped")
        variants = [v for v in variants if v not in RAY_VARIANTS]
    # the cnnopt studies' journals live beside the table's runs, so a killed run resumes the
    # study it was in (cnnopt run resumes a study from its storage) instead of starting it over
    workdir = Path(workdir) if workdir else Path("runs") / "live-journals"
    workdir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for v in variants:
            key = f"{v}/{seed}"
            # another live run (one per core) may have finished or be running this study
            held = load_table(out).get("studies", {}).get(key)
            why = held and _why_again(held, v, redo_unrecorded, redo, started)
            if held is not None and not why:
                continue
            if not _claim(workdir, v, seed):
                continue
            if held is not None:
                log(f"{key}: {why}: running it again")
                _drop_stale_journal(workdir, v, seed, all_trials=v in redo)
            t0 = time.perf_counter()
            common = dict(study_file=study_file, budget=budget, epochs=epochs,
                          train_subset=train_subset, data_dir=data_dir, log=log)  # fmt: skip
            try:
                if v in RAY_VARIANTS:
                    trials = run_ray(seed, sampler=RAY_VARIANTS[v], **common)
                else:
                    trials = run_cnnopt(v, seed, workdir=workdir, **common)
                rec = {"variant": v, "seed": seed, "trials": trials,
                       "wall_s": round(time.perf_counter() - t0, 1), "saved_at": _now()}  # fmt: skip
                table["studies"] = {**load_table(out).get("studies", {}), key: rec}
                save_table(table, out)
            finally:
                (workdir / f"live-{v}-{seed}.claim").unlink(missing_ok=True)
            r = to_replay(rec, budget, epochs)
            log(f"{key}: best {r.best:.4f} in {r.epochs} epochs, {r.trials} trials, "
                f"{rec['wall_s']:.0f}s")  # fmt: skip
    table["studies"] = load_table(out).get("studies", {})
    return table


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _iso(text: str) -> str:
    """``--redo-before`` as the table writes ``saved_at`` (UTC, microseconds), or a usage error."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"--redo-before {text!r}: not an ISO 8601 time (2026-12-08T00:00)"
        ) from None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.isoformat(timespec="microseconds")


def _why_again(
    held: dict[str, Any], variant: str, redo_unrecorded: bool, redo: Iterable[str], started: str
) -> str:
    """Why a study the table holds is run again ("" when it is kept)."""
    unrecorded = study_hardware(held)[0]
    if redo_unrecorded and unrecorded:
        return unrecorded
    # a row saved after this run started is another run's redo (one run per core): kept
    saved = held.get("saved_at")
    if variant in redo and (
        not saved or datetime.fromisoformat(saved) < datetime.fromisoformat(started)
    ):
        return f"held from before this run (--redo {variant})"
    return ""


def _drop_stale_journal(workdir: Path, variant: str, seed: int, all_trials: bool = False) -> None:
    """Before a study is run again: set its old journal aside (``.stale``) if it holds trials
    without a hardware record, which ``cnnopt run`` would otherwise resume as they are; a journal
    of an interrupted rerun (its trials record their hardware) is kept and resumed. With
    ``all_trials`` (``--redo``) it is set aside whatever it holds: the study starts over."""
    path = workdir / f"live-{variant}-{seed}.journal"
    if not path.exists():
        return
    trials = _trials(str(path), f"live-{variant}-{seed}")
    if all_trials or any(
        t.intermediate_values and not t.user_attrs.get("hardware") for t in trials
    ):
        path.replace(path.with_name(path.name + ".stale"))


def _claim(workdir: Path, variant: str, seed: int) -> bool:
    """Take the study for this process unless a live process holds it (a claim file with its
    pid; a dead holder's claim is taken over, its journal resumed)."""
    path = workdir / f"live-{variant}-{seed}.claim"
    try:
        holder = int(path.read_text())
        os.kill(holder, 0)
        if holder != os.getpid():
            return False
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass
    path.write_text(str(os.getpid()))
    return True


# -- the section's live part ---------------------------------------------------------------------

SEEDS_REQUIRED = 5  # live seeds per variant before the part is evidence rather than provisional
LIVE_TARGET = 0.91  # the validation accuracy a study of this space should reach on 12k / 3k


def summarize(
    path: Path | str, *, target: float = LIVE_TARGET, reference: float | None = None
) -> tuple[dict[str, Any], dict]:
    """The live table's figures: per variant, its studies as Replays and their means; paired
    differences of cnnopt's default against each other variant on the seeds both ran.
    ``reference`` is a second, reachable target: the random pool's ceiling, the best of its
    configurations each trained to the end (same split, recipe and epochs as the live trials), so
    "reached" says whether 120 epochs of search found what a thousand epochs of random search did.

    Returns (details, replays by variant); without a table, details with a one-line ``note``."""
    from benchmarks.search import stats

    path = Path(path)
    if not path.is_file():
        note = (
            f"live studies: no table at {path.name} (run `python -m benchmarks.search.live`); "
            "the live part is skipped"
        )
        return {"note": note}, {}
    table = load_table(path)
    meta = table["meta"]
    budget, epochs = int(meta["budget"]), int(meta["epochs"])
    by: dict[str, dict[int, Replay]] = {}
    recs: dict[str, dict[int, dict[str, Any]]] = {}
    walls: dict[str, dict[int, float]] = {}
    for rec in table.get("studies", {}).values():
        by.setdefault(rec["variant"], {})[int(rec["seed"])] = to_replay(rec, budget, epochs)
        recs.setdefault(rec["variant"], {})[int(rec["seed"])] = rec
        walls.setdefault(rec["variant"], {})[int(rec["seed"])] = float(rec.get("wall_s") or 0)
    order = [v for v in dict.fromkeys((*REQUIRED, *VARIANTS)) if v in by]  # the owed ones first
    cap = budget + epochs  # 'never within the budget' counts as one more full trial
    summary: dict[str, Any] = {}
    for v in order:
        rs = [by[v][s] for s in sorted(by[v])]
        best = [r.best if math.isfinite(r.best) else 0.0 for r in rs]
        entry: dict[str, Any] = {
            "label": LABELS[v],
            "seeds": sorted(by[v]),
            "best": best,
            "best_mean": float(sum(best) / len(best)),
            "best_half_mean": float(sum(max(r.best_at(budget // 2), 0.0) for r in rs) / len(rs)),
            "reached": sum(math.isfinite(r.epochs_to(target)) for r in rs),
            "reached_reference": None
            if reference is None
            else sum(math.isfinite(r.epochs_to(reference)) for r in rs),
            "epochs_to_target_mean": float(
                sum(stats.capped([r.epochs_to(target) for r in rs], cap)) / len(rs)
            ),
            "trials_mean": sum(r.trials for r in rs) / len(rs),
            "pruned_mean": sum(r.pruned for r in rs) / len(rs),
            "duplicates_mean": sum(r.duplicates for r in rs) / len(rs),
            # a study resumed from its journal by an older version recorded no wall time (0)
            "wall_min_mean": _mean([w for w in walls[v].values() if w > 0]) / 60,
            "vs_default": None,
            "unpaired": {},
            "vs_default_first_match": None,
        }
        if v != "default" and "default" in by:
            entry.update(_versus_default(v, recs["default"], recs[v], by["default"], by[v]))
        summary[v] = entry
    counts = {v: len(by.get(v, {})) for v in REQUIRED}
    if len(set(counts.values())) == 1:
        provisional = f"{counts['default']} of {SEEDS_REQUIRED} seeds for every variant"
    else:
        provisional = "seeds so far " + ", ".join(f"{v} {n}" for v, n in counts.items())
        provisional += f" ({SEEDS_REQUIRED} each required)"
    details = {
        "table": path.name,
        "study_file": meta.get("study_file", ""),
        "budget": budget,
        "epochs": epochs,
        "target": target,
        "reference": reference,
        "train_subset": meta.get("train_subset"),
        "seeds_required": SEEDS_REQUIRED,
        "provisional": provisional if min(counts.values()) < SEEDS_REQUIRED else "",
        "summary": summary,
    }
    replays = {LABELS[v]: [by[v][s] for s in sorted(by[v])] for v in order}
    return details, replays


def study_hardware(rec: dict[str, Any]) -> tuple[str, Any]:
    """Where a live study ran: ("", (cpu, torch_threads)) when every trained trial records the
    same; otherwise the fault, "not recorded" or "mixed" (resumed on another machine)."""
    seen = {
        (t["hardware"].get("cpu"), t["hardware"].get("torch_threads"))
        for t in rec["trials"]
        if t.get("values")
        and t.get("duplicate_of") is None
        and (t.get("hardware") or {}).get("cpu")
    }
    untracked = any(
        t.get("values")
        and t.get("duplicate_of") is None
        and not (t.get("hardware") or {}).get("cpu")
        for t in rec["trials"]
    )
    if not seen:
        return "hardware not recorded", None
    if len(seen) > 1 or untracked:
        return "hardware mixed within a study", None
    return "", next(iter(seen))


def first_curve(rec: dict[str, Any]) -> list[float] | None:
    trials = rec.get("trials") or []
    return list(trials[0]["values"]) if trials else None


def pair_fault(variant: str, default: dict[str, Any], other: dict[str, Any]) -> str:
    """Why the default's study and ``other`` (same seed) are not a clean pair, or "" if they are:
    both record one and the same hardware, and where the two start from the same configuration
    (SAME_FIRST_TRIAL) their first-trial curves agree to the last digit."""
    faults = []
    if variant in SAME_FIRST_TRIAL and first_curve(default) != first_curve(other):
        faults.append("first trials differ")
    (fa, ha), (fb, hb) = study_hardware(default), study_hardware(other)
    if fa:
        faults.append(f"{fa} (default's study)")
    if fb:
        faults.append(f"{fb} (this study)")
    if not (fa or fb) and ha != hb:
        faults.append(f"hardware differs ({ha[0]}, {ha[1]} threads vs {hb[0]}, {hb[1]} threads)")
    return "; ".join(faults)


def _paired(a: dict[int, Replay], b: dict[int, Replay], seeds: list[int]) -> dict[str, Any] | None:
    """The default's best minus the variant's on ``seeds``: bootstrap and t intervals."""
    from benchmarks.search import stats

    if not seeds:
        return None
    diffs = [max(a[s].best, 0.0) - max(b[s].best, 0.0) for s in seeds]
    if len(seeds) == 1:  # one pair: its difference, no interval (shown as such, see _fmt_diff)
        return {"mean": diffs[0], "n": 1, "ahead": int(diffs[0] > 0), "seeds": seeds}
    ci, t = stats.bootstrap_mean(diffs), stats.t_mean(diffs)
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n, "t_low": t.low,
            "t_high": t.high, "ahead": sum(x > 0 for x in diffs), "seeds": seeds}  # fmt: skip


def _versus_default(
    variant: str,
    default_recs: dict[int, dict[str, Any]],
    recs: dict[int, dict[str, Any]],
    default: dict[int, Replay],
    other: dict[int, Replay],
) -> dict[str, Any]:
    """The paired difference over clean pairs only (``vs_default``, with n), the seeds left
    unpaired and why; and, for the variants that share the default's first trial, the weaker
    figure over the pairs whose only fault is a missing hardware record while their first-trial
    curves agree to the last digit (``vs_default_first_match``): evidence that the two ran alike,
    not proof, so no claim rests on it."""
    common = sorted(set(default) & set(other))
    faults = {s: pair_fault(variant, default_recs[s], recs[s]) for s in common}
    clean = [s for s in common if not faults[s]]
    out: dict[str, Any] = {
        "vs_default": _paired(default, other, clean),
        "unpaired": {s: f for s, f in faults.items() if f},
        "vs_default_first_match": None,
    }
    if variant in SAME_FIRST_TRIAL:
        # the only fault a missing record, however many sides miss it
        matched = [
            s
            for s in common
            if all(f.startswith("hardware not recorded") for f in faults[s].split("; ") if f)
        ]
        if matched != clean:
            out["vs_default_first_match"] = _paired(default, other, matched)
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _fmt_diff(vs: dict[str, float] | None, unpaired: int = 0) -> str:
    """A paired difference over clean pairs; its intervals only from SEEDS_REQUIRED pairs on (with
    two or three a bootstrap interval is little more than the range of the differences). Both
    intervals are shown: with this few seeds the t interval is the one a claim rests on
    (stats.t_mean). ``unpaired``: the common seeds left out as not clean."""
    left = f", {unpaired} unpaired" if unpaired else ""
    if not vs:
        return f"no clean pairs{left}" if unpaired else "-"
    if vs["n"] < SEEDS_REQUIRED:
        return f"{vs['mean']:+.4f} (n={vs['n']}{left}, no interval below {SEEDS_REQUIRED} pairs)"
    return (
        f"{vs['mean']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}] bootstrap, "
        f"[{vs['t_low']:+.4f}, {vs['t_high']:+.4f}] t; ahead in {vs['ahead']} of {vs['n']} "
        f"(n={vs['n']}{left})"
    )


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def live_markdown(d: dict[str, Any]) -> list[str]:
    """The live part's lines: one line when there is no table."""
    if "summary" not in d:
        return [d["note"]]
    lines = ["### Live studies on the full space", ""]
    ref = d.get("reference")  # the pool's ceiling, where the section has the pool
    if d["provisional"]:
        lines += [
            f"**Incomplete ({d['provisional']}): the live figures below are provisional.**",
            "",
        ]
    second = (
        f"; second target the random pool's ceiling {ref:.4f} (its best configuration trained to "
        "the end, same split and recipe)."
        if ref is not None
        else "."
    )
    header = ["variant", "seeds", "best val acc", "at half budget",
              "default minus this, clean pairs",
              "default minus this, clean pairs and first trials identical on unrecorded hardware",
              f"reached {d['target']:.2f}", "epochs to target"]  # fmt: skip
    header += [f"reached pool ceiling {ref:.4f}"] if ref is not None else []
    header += ["trials", "pruned", "copies", "min / study"]
    lines += [
        f"Real studies on {d['study_file']}'s space without its warm starts ({d['table']}; "
        "the row with warm starts excepted), "
        f"{d['budget']} trained epochs each, {d['epochs']} epochs per full trial, the 12k / 3k "
        "subset; a seed is the sampler's and the training seed, shared by the variants. "
        "Differences: cnnopt's default minus the variant, paired per seed, with 95% percentile "
        "bootstrap and Student's t intervals (with this few seeds the bootstrap is too narrow: "
        "a difference counts only where the t interval excludes zero). A pair is clean when both "
        "studies record the same hardware (CPU model, torch threads) and, where both start from "
        "the same configuration, their first trials' curves agree to the last digit; only clean "
        "pairs enter the interval a claim rests on, and n counts them. The column beside it is "
        "weaker evidence, not a claim: the clean pairs together with those whose first trials "
        "agree to the last digit but whose hardware was not recorded (shown only where there "
        "are such pairs). "
        f"Target {d['target']:.2f} val accuracy{second}",
        "",
        _md_row(header),
        "|" + "---|" * len(header),
    ]
    for e in d["summary"].values():
        n = len(e["seeds"])
        cells = [e["label"], str(n), f"{e['best_mean']:.4f}", f"{e['best_half_mean']:.4f}",
                 _fmt_diff(e["vs_default"], len(e["unpaired"])),
                 _fmt_diff(e["vs_default_first_match"]) if e["vs_default_first_match"] else "-",
                 f"{e['reached']} of {n}",
                 f"{e['epochs_to_target_mean']:.0f}"]  # fmt: skip
        if ref is not None:
            cells.append(f"{e['reached_reference']} of {n}")
        cells += [f"{e['trials_mean']:.1f}", f"{e['pruned_mean']:.1f}",
                  f"{e['duplicates_mean']:.1f}", f"{e['wall_min_mean']:.1f}"]  # fmt: skip
        lines.append(_md_row(cells))
    seeds = sorted({s for e in d["summary"].values() for s in e["seeds"]})
    names = list(d["summary"])
    lines += ["", _md_row(["seed"] + [d["summary"][v]["label"] for v in names]),
              "|---|" + "---|" * len(names)]  # fmt: skip
    for s in seeds:
        cells = []
        for v in names:
            e = d["summary"][v]
            cells.append(f"{e['best'][e['seeds'].index(s)]:.4f}" if s in e["seeds"] else "-")
        lines.append(_md_row([str(s), *cells]))
    unpaired = [(e["label"], e["unpaired"]) for e in d["summary"].values() if e["unpaired"]]
    if unpaired:
        lines += ["", "Unpaired seeds (left out of the clean-pair intervals):", ""]
        for label, faults in unpaired:
            by_fault: dict[str, list[int]] = {}
            for seed, fault in sorted(faults.items()):
                by_fault.setdefault(fault, []).append(seed)
            lines.append(
                f"- {label}: "
                + "; ".join(
                    f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))} "
                    f"({f.replace('; ', ', ')})"
                    for f, ss in by_fault.items()
                )
            )
    return lines


def _pool_ceiling() -> float | None:
    """The random pool's best configuration trained to the end: the live part's second target,
    as the section computes it (None without the pool's table)."""
    from benchmarks.search.pool import TABLE as POOL_TABLE
    from benchmarks.search.pool_replay import PoolTable

    return PoolTable.load(POOL_TABLE).ceiling() if Path(POOL_TABLE).is_file() else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search.live", description=__doc__)
    p.add_argument("--out", default=str(TABLE))
    p.add_argument("--study", default=STUDY_FILE)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(101, 109)))
    p.add_argument("--variants", nargs="+", default=list(REQUIRED), choices=VARIANTS)
    p.add_argument("--budget", type=int, default=BUDGET)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--train-subset", type=int, default=TRAIN_SUBSET)
    p.add_argument("--workdir", default=None, help="the studies' journals [runs/live-journals]")
    p.add_argument(
        "--redo-unrecorded",
        action="store_true",
        help="run again the studies the table holds without one hardware record (they pair with "
        "no other study)",
    )
    p.add_argument(
        "--redo", nargs="+", default=[], choices=VARIANTS, metavar="VARIANT",
        help="run again from scratch, and replace, these variants' studies the table holds from "
        "before this run (one run per core may share them: a study another run replaced is kept)",
    )  # fmt: skip
    p.add_argument(
        "--redo-before", default=None, metavar="TIME",
        help="with --redo: replace the studies saved before TIME (ISO 8601, UTC, as the table's "
        "saved_at) instead of before this run: to go on with a redo begun in an earlier session",
    )  # fmt: skip
    p.add_argument(
        "--summary", action="store_true",
        help="print the live part of the search section from --out's table (the pool's ceiling "
        "from the committed pool table); run nothing",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.summary:
        print("\n".join(live_markdown(summarize(a.out, reference=_pool_ceiling())[0])))
        return
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # the table records the command that regenerates all of it, not this run's share of the
    # seeds and variants (runs on several cores split them)
    canonical = argparse.Namespace(
        **{**vars(a), "seeds": p.get_default("seeds"), "variants": p.get_default("variants"),
           "redo_unrecorded": False, "redo": None, "redo_before": None}
    )  # fmt: skip
    run_live(
        Path(a.out), variants=a.variants, seeds=a.seeds, study_file=a.study, budget=a.budget,
        epochs=a.epochs, train_subset=a.train_subset, data_dir=a.data_dir,
        command=command_line("python -m benchmarks.search.live", canonical), workdir=a.workdir,
        redo_unrecorded=a.redo_unrecorded, redo=a.redo,
        redo_before=_iso(a.redo_before) if a.redo_before else None,
        log=lambda msg: print(msg, flush=True, file=sys.stdout),
    )  # fmt: skip


if __name__ == "__main__":
    main()
