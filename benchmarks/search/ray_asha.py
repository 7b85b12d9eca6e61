"""Real Ray Tune on the table: random search + ``ASHAScheduler`` configured as in Ray's PyTorch
tutorial that report R2 followed (max_t=10, grace_period=1, reduction_factor=2, the scheduler
watching validation loss), with a function trainable that reports the tabulated curve epoch by
epoch, so Ray's own scheduler decides what stops.

Ray samples (``tune.choice`` per grid key, ``BasicVariantGenerator`` seeded per replay) and trains
repeats again, as R2's search did; a repeat reports the next training seed's curve, as in the
Optuna replays without deduplication. Trials run one at a time (ASHA decides from results already
reported, so the order is the only thing concurrency would change) and a stopper ends the
experiment when the epoch budget is spent; the trial the budget cuts never completes, as in
``replay``. Many replay seeds share one Ray session: Ray starts once.

Ray Tune is the optional ``bench`` extra (``pip install 'cnnopt[bench]'``); without it
``available()`` is False and the search section says so and skips these rows.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.search.replay import Replay, Table
from benchmarks.search.tabulate import config_key

NAME = "ray_random+asha"


def available() -> bool:
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        return False
    return True


def quiet_ray() -> None:
    """Ray settings for a benchmark: no new console output, no result files or loggers, no
    duplicated logs, one pending trial at a time (trials run in the order they are sampled), and
    no strict metric check (a diverged trial is pruned, not an error)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1")
    # A trial that diverges before its first report ends with one result holding its config but
    # no metric; Ray's strict check would end the whole experiment on it. ASHA, OptunaSearch and
    # budget_stopper each skip a result without the metric (the trial counts as pruned).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


def budget_stopper(budget: int, metric: str):
    """A Ray Tune stopper that ends the experiment once ``budget`` epochs have been reported and
    keeps every epoch's result in the order Ray delivered it (the driver sees them all; no result
    files needed). A result without ``metric`` is no epoch: Ray sends one, empty, for a trial that
    ended before its first report (a diverged configuration), and it costs nothing."""
    from ray import tune

    class Budget(tune.Stopper):
        def __init__(self) -> None:
            self.used = 0
            self.results: list[tuple[str, dict]] = []

        def __call__(self, trial_id: str, result: dict) -> bool:
            if metric not in result:
                return False
            self.used += 1
            self.results.append((trial_id, result))
            return False

        def stop_all(self) -> bool:
            return self.used >= budget

    return Budget()


def _curves(data: dict[str, Any]) -> dict[str, dict[int, list[dict[str, float]]]]:
    """The table's runs by configuration and seed, each epoch priced at the configuration's
    median epoch time (as ``Table`` prices them, so both engines share one seconds axis)."""
    table = Table(data)
    out: dict[str, dict[int, list[dict[str, float]]]] = {}
    for run in data["runs"].values():
        key = config_key(run["config"])
        seed = int(run["seed"])
        if key not in table.seconds or seed not in table.seconds[key]:
            continue
        out.setdefault(key, {})[seed] = [
            {**e, "seconds": table.seconds[key][seed][0]} for e in run["epochs"]
        ]
    return out


def _trainable(config: dict[str, Any], curves, seeds, first_seed, grid_keys, counts_path) -> None:
    """Ray's function trainable: one tabulated training run, reported epoch by epoch."""
    from ray import tune

    key = config_key({k: config[k] for k in grid_keys})
    # trials run one at a time, so a plain file counts this replay's trainings per configuration
    path = Path(counts_path)
    counts = json.loads(path.read_text()) if path.exists() else {}
    n = counts.get(key, 0)
    counts[key] = n + 1
    path.write_text(json.dumps(counts))
    seed = seeds[(first_seed + n) % len(seeds)]
    for e in curves[key][seed]:
        tune.report(
            {
                "val_accuracy": e["val_accuracy"],
                "val_loss": e["val_loss"],
                "seconds": e["seconds"],
                "config_key": key,
                "train_seed": seed,
            }
        )


def run_asha(
    data: dict[str, Any],
    seeds: list[int] | range,
    *,
    budget: int = 120,
    table_seeds: list[int] | None = None,
    metric: str = "val_loss",
    mode: str = "min",
    num_cpus: int = 1,
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[list[Replay], dict[str, float]]:
    """One Ray Tune experiment per replay seed, all in one Ray session; returns the replays and
    timings (Ray start, seconds per replay)."""
    quiet_ray()
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    grid = {k: list(v) for k, v in data["meta"]["grid"].items()}
    epochs = int(data["meta"]["epochs"])
    curves = _curves(data)
    tseeds = table_seeds or Table(data).seeds

    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    started = time.perf_counter() - t0
    replays: list[Replay] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cnnopt-ray-") as tmp:
            t1 = time.perf_counter()
            for seed in seeds:
                trainable = tune.with_parameters(
                    _trainable, curves=curves, seeds=tseeds, first_seed=seed % len(tseeds),
                    grid_keys=list(grid), counts_path=str(Path(tmp) / f"counts-{seed}.json"),
                )  # fmt: skip
                stopper = budget_stopper(budget, metric)
                tuner = tune.Tuner(
                    tune.with_resources(trainable, {"cpu": 1}),
                    param_space={k: tune.choice(v) for k, v in grid.items()},
                    tune_config=tune.TuneConfig(
                        scheduler=ASHAScheduler(
                            metric=metric, mode=mode, max_t=epochs, grace_period=1,
                            reduction_factor=2,
                        ),
                        search_alg=BasicVariantGenerator(random_state=seed),
                        num_samples=budget,  # more than fit: the budget stopper ends it
                        reuse_actors=True,  # one actor for all trials: no per-trial start-up
                    ),
                        run_config=tune.RunConfig(
                        name=f"seed{seed}", storage_path=tmp, stop=stopper, verbose=0
                    ),
                )  # fmt: skip
                tuner.fit()
                replays.append(_to_replay(stopper.results, seed, budget, epochs))
            per = (time.perf_counter() - t1) / max(len(replays), 1)
    finally:
        ray.shutdown()
    log(f"{NAME}: {len(replays)} replays, Ray start {started:.1f}s, {per:.1f}s per replay")
    return replays, {"ray_start_s": started, "seconds_per_replay": per}


def _to_replay(results: list[tuple[str, dict]], seed: int, budget: int, epochs: int) -> Replay:
    """Ray's results, in the order they arrived (one trial at a time: the one CPU Ray is given
    holds one trial), cut at the budget, as a Replay."""
    by_trial: dict[str, list[dict]] = {}
    for trial_id, result in results:
        by_trial.setdefault(trial_id, []).append(result)  # dicts keep first-seen order
    out = Replay(NAME, seed, budget)
    seen: dict[str, int] = {}
    for rows in by_trial.values():
        if out.epochs >= budget:
            break
        key = str(rows[0]["config_key"])
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.trials += 1
        out.duplicates += n > 0
        accs = [r["val_accuracy"] for r in rows]
        secs = [r["seconds"] for r in rows]
        take = min(len(accs), budget - out.epochs)
        out.epochs += take
        out.seconds += sum(secs[:take])
        out.duplicate_epochs += take if n > 0 else 0
        if take == epochs:
            if accs[-1] > out.best:
                out.best, out.best_key = accs[-1], key
            state = "COMPLETE"
        elif out.epochs >= budget:
            state = "FAIL"  # cut by the budget (the stopper ends Ray's trial there too)
        else:
            state = "PRUNED"
            out.pruned += 1
        out.trace.append((out.epochs, out.seconds, out.best))
        out.log.append((key, state, take))
    if out.best == -math.inf:
        out.best_key = None
    return out
