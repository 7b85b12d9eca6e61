"""Live studies on a study's whole space: the replays' confirmation, with real training.

Three variants, each given the same budget of trained epochs (120: twelve full trials of 10) on the
search benchmark's 12k / 3k subset, without the study file's warm starts:

- ``default``: ``cnnopt run`` with the study file's own sampler and pruner (TPE, successive
  halving, deduplication);
- ``random``: ``cnnopt run --set sampler=random --set pruner=none`` (R2's method in cnnopt);
- ``ray_asha``: real Ray Tune, random search through the study file's own ``space()``
  (``OptunaSearch`` with Optuna's RandomSampler, define-by-run) under ``ASHAScheduler`` as in Ray's
  PyTorch tutorial that R2 followed, with cnnopt's trainer inside the Ray trainable.

Three more, run only when asked (``--variants``): ``tpe_sh1`` (the default with rungs from epoch
1), ``noaug`` (the default with the study file's augmentation off: what the final recipe's crop,
mirror and mirror TTA cost a 10-epoch trial on 12k images) and ``warm`` (the default with the
study file's warm starts, as a user runs it: what they are worth).

Every study's seed is the sampler's seed and the training seed, so a seed pairs the three variants
on the same data split (``split_seed`` is the benchmark's, not the seed). The cnnopt variants run the
real command, one worker, stopped with SIGTERM (as a user stops it) once its journal shows the
budget trained (a copy from deduplication costs none); the trial the budget cuts counts as never
completed, as in the replays. Records are written after every study, so an interrupted run resumes
with the next study.

    python -m benchmarks.search.live --out benchmarks/search/tables/fashion_live.json \\
        --data-dir ../shared/data/fashion-mnist --seeds 101 102 103 104 105 106 107 108

Eight seeds, not the five the benchmark asks for at least: with five, the paired differences
were one-signed but Student's t interval still included zero, so the comparison was extended to
eight seeds, decided before seeds 106 to 108 had results; every study run is in the table.

Ray Tune is the optional ``bench`` extra; without it the ``ray_asha`` variant is skipped with a
message.
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
VARIANTS = (*CNNOPT_VARIANTS, "ray_asha")
REQUIRED = ("default", "random", "ray_asha")  # the comparison the benchmark owes
LABELS = {
    "default": "cnnopt default (tpe+sh3+dedup)",
    "random": "random search, no pruning",
    "ray_asha": "Ray Tune random + ASHA",
    "tpe_sh1": "cnnopt TPE + SH from epoch 1",
    "noaug": "cnnopt default, trials without augmentation",
    "warm": "cnnopt default with the study file's warm starts",
}


def _benchmark_sets(epochs: int, train_subset: int | None, warm_starts: bool = False) -> list[str]:
    """The search benchmark's protocol, as ``--set`` values (no warm starts unless asked)."""
    sets = [f"epochs={epochs}", f"train_subset={train_subset}", f"val_fraction={VAL_FRACTION}",
            f"split_seed={SPLIT_SEED}"]  # fmt: skip
    return sets if warm_starts else [*sets, "enqueue=[]"]


def trained_epochs(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """Epochs a study has trained: every reported epoch, except on deduplication's copies."""
    return sum(len(t.intermediate_values) for t in trials if "duplicate_of" not in t.user_attrs)


def _trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    history = t.user_attrs.get("history") or []
    return {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        "values": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
        "seconds": [h.get("seconds") for h in history],
        "duplicate_of": t.user_attrs.get("duplicate_of"),
        "params_count": t.user_attrs.get("params_count"),
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
) -> list[dict[str, Any]]:
    """One live study of a cnnopt variant: ``cnnopt run`` until ``budget`` epochs are trained,
    then stopped as a user stops it (SIGTERM: the trial in progress is interrupted at its epoch's
    end); returns its trials in order. A study resumed from its journal goes on where it was."""
    name = f"live-{variant}-{seed}"
    url = str(workdir / f"{name}.journal")
    sets = _benchmark_sets(epochs, train_subset, warm_starts=variant in WITH_WARM_STARTS)
    sets += [*CNNOPT_VARIANTS[variant], f"name={name}"]
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
        values = [t.value for t in finished if t.value is not None]  # complete trials
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
    from cnnopt.train import fit

    torch.set_num_threads(1)  # the one CPU Ray was given
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
) -> list[dict[str, Any]]:
    """One live Ray Tune experiment: random search over the study's space under ASHA (grace period
    1, reduction factor 2, on validation loss as Ray's tutorial), stopped at ``budget`` epochs."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

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
                        sampler=optuna.samplers.RandomSampler(seed=seed),
                    ),
                    num_samples=budget,  # more than fit: the budget stopper ends it
                    # one actor for all trials: torch and cnnopt imported once, the data split
                    # loaded once (cnnopt.data caches it per process)
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"live-ray-{seed}", storage_path=tmp, stop=stopper, verbose=0
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
            }
        )
    log(f"live-ray_asha-{seed}: {len(records)} trials")
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
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Every (seed, variant) study the table at ``out`` lacks, seeds outer (a finished seed pairs
    its variants), saved after each. Several runs may share a table (one per core, with
    different seed orders): a study another run finished or holds is skipped."""
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
    if "ray_asha" in variants and not ray_asha.available():
        log("Ray Tune is not installed (pip install 'cnnopt[bench]'): ray_asha skipped")
        variants.remove("ray_asha")
    # the cnnopt studies' journals live beside the table's runs, so a killed run resumes the
    # study it was in (cnnopt run resumes a study from its storage) instead of starting it over
    workdir = Path(workdir) if workdir else Path("runs") / "live-journals"
    workdir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for v in variants:
            key = f"{v}/{seed}"
            # another live run (one per core) may have finished or be running this study
            if key in load_table(out).get("studies", {}) or not _claim(workdir, v, seed):
                continue
            t0 = time.perf_counter()
            common = dict(study_file=study_file, budget=budget, epochs=epochs,
                          train_subset=train_subset, data_dir=data_dir, log=log)  # fmt: skip
            try:
                if v == "ray_asha":
                    trials = run_ray(seed, **common)
                else:
                    trials = run_cnnopt(v, seed, workdir=workdir, **common)
                rec = {"variant": v, "seed": seed, "trials": trials,
                       "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
                table["studies"] = {**load_table(out).get("studies", {}), key: rec}
                save_table(table, out)
            finally:
                (workdir / f"live-{v}-{seed}.claim").unlink(missing_ok=True)
            r = to_replay(rec, budget, epochs)
            log(f"{key}: best {r.best:.4f} in {r.epochs} epochs, {r.trials} trials, "
                f"{rec['wall_s']:.0f}s")  # fmt: skip
    table["studies"] = load_table(out).get("studies", {})
    return table


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
    walls: dict[str, dict[int, float]] = {}
    for rec in table.get("studies", {}).values():
        by.setdefault(rec["variant"], {})[int(rec["seed"])] = to_replay(rec, budget, epochs)
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
        }
        if v != "default" and "default" in by:
            common = sorted(set(by[v]) & set(by["default"]))
            if len(common) >= 2:
                a = [max(by["default"][s].best, 0.0) for s in common]
                b = [max(by[v][s].best, 0.0) for s in common]
                diffs = [x - y for x, y in zip(a, b, strict=True)]
                ci, t = stats.bootstrap_mean(diffs), stats.t_mean(diffs)
                entry["vs_default"] = {
                    "mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n,
                    "t_low": t.low, "t_high": t.high, "ahead": sum(x > 0 for x in diffs),
                }  # fmt: skip
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


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _fmt_diff(vs: dict[str, float] | None) -> str:
    """A paired difference; its intervals only from SEEDS_REQUIRED seeds on (with two or three
    seeds a bootstrap interval is little more than the range of the differences). Both intervals
    are shown: with this few seeds the t interval is the one a claim rests on (stats.t_mean)."""
    if not vs:
        return "-"
    if vs["n"] < SEEDS_REQUIRED:
        return f"{vs['mean']:+.4f} (n={vs['n']}, no interval below {SEEDS_REQUIRED} seeds)"
    return (
        f"{vs['mean']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}] bootstrap, "
        f"[{vs['t_low']:+.4f}, {vs['t_high']:+.4f}] t; ahead in {vs['ahead']} of {vs['n']} "
        f"(n={vs['n']})"
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
    header = ["variant", "seeds", "best val acc", "at half budget", "default minus this",
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
        "a difference counts only where the t interval excludes zero). "
        f"Target {d['target']:.2f} val accuracy{second}",
        "",
        _md_row(header),
        "|" + "---|" * len(header),
    ]
    for e in d["summary"].values():
        n = len(e["seeds"])
        cells = [e["label"], str(n), f"{e['best_mean']:.4f}", f"{e['best_half_mean']:.4f}",
                 _fmt_diff(e["vs_default"]), f"{e['reached']} of {n}",
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
    return lines


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
    a = p.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # the table records the command that regenerates all of it, not this run's share of the
    # seeds and variants (runs on several cores split them)
    canonical = argparse.Namespace(
        **{**vars(a), "seeds": p.get_default("seeds"), "variants": p.get_default("variants")}
    )
    run_live(
        Path(a.out), variants=a.variants, seeds=a.seeds, study_file=a.study, budget=a.budget,
        epochs=a.epochs, train_subset=a.train_subset, data_dir=a.data_dir,
        command=command_line("python -m benchmarks.search.live", canonical), workdir=a.workdir,
        log=lambda msg: print(msg, flush=True, file=sys.stdout),
    )  # fmt: skip


if __name__ == "__main__":
    main()
