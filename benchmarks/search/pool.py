"""Tabulate a fixed random pool of a study's configurations: the full-space counterpart of R2's grid.

R2's grid has 27 configurations of one small model; the `fashion_cnn_bn` space has optimizers,
depths, widths, kernels, BN placement, activations, dropout, pooling heads and batch sizes, whose
epochs cost from seconds to a minute. No table can hold every configuration of it, so the pool is a
seeded random sample: Optuna's RandomSampler runs the study file's own ``space()`` (``--pool-seed``),
configurations that resolve to the same RunConfig are drawn once, and each is trained with cnnopt's
own trainer exactly as a trial of the study would be (the study's fixed settings and recipe, the
12k/3k subset of the search benchmark, ``train.fit``), once per training seed.

The pool is trained in its sampling order and written after every run (atomically), so an
interrupted tabulation resumes where it stopped and every prefix of the table is itself a random
sample of the space: a table of 60 configurations is a smaller pool, not a biased one.

    python -m benchmarks.search.pool --out benchmarks/search/tables/fashion_pool.json \
        --data-dir ../shared/data/fashion-mnist --size 100 --seeds 0 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna

from benchmarks.search.tabulate import (
    EPOCHS,
    SPLIT_SEED,
    TRAIN_SUBSET,
    VAL_FRACTION,
    command_line,
    config_key,
    load_table,
    run_key,
    save_table,
    train_curve,
)

STUDY_FILE = "studies/fashion_cnn_bn.py"
TABLE = Path(__file__).with_name("tables") / "fashion_pool.json"


def load_study(study_file: str | Path, *, epochs: int, train_subset: int | None, data_dir=None):
    """The study file as the benchmark runs it: its own space, fixed settings and recipe, on the
    search benchmark's subset and split."""
    from cnnopt.study import Study

    overrides: dict[str, Any] = {
        "epochs": epochs, "train_subset": train_subset, "val_fraction": VAL_FRACTION,
        "split_seed": SPLIT_SEED,
    }  # fmt: skip
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return Study.load(study_file, overrides=overrides)


def sample_pool(study, size: int, pool_seed: int = 0) -> list[dict[str, Any]]:
    """``size`` configurations of the study's space, drawn at random (seeded) by Optuna's
    RandomSampler through the study's own ``space()``; params that resolve to a RunConfig
    already drawn (or that the config rejects) are drawn again. Deterministic in ``pool_seed``."""
    from cnnopt.dedup import config_hash
    from cnnopt.errors import ConfigError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=pool_seed))
    seen: set[str] = set()
    pool: list[dict[str, Any]] = []
    for _ in range(size * 20):  # a guard: a tiny discrete space cannot give `size` configurations
        if len(pool) == size:
            break
        trial = ostudy.ask()
        try:
            h = config_hash(study.resolve(trial))
        except ConfigError:
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        ostudy.tell(trial, 0.0)
        if h not in seen:
            seen.add(h)
            pool.append(dict(trial.params))
    return pool


def train_config(study, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train one pooled configuration as a trial of the study would train it; return its curve."""
    return train_curve(study.config_from_params(params).replace(seed=seed), params, seed)


def tabulate_pool(
    out: Path,
    *,
    study_file: str | Path = STUDY_FILE,
    size: int = 100,
    pool_seed: int = 0,
    seeds: Iterable[int] = (0,),
    data_dir: str | None = None,
    epochs: int = EPOCHS,
    train_subset: int | None = TRAIN_SUBSET,
    command: str = "",
    limit: int | None = None,
    warm_starts: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Train every pooled run the table at ``out`` lacks (at most ``limit``), saving after each;
    the pool's order is the sampling order, seeds inner (a configuration's seeds come together).
    With ``warm_starts``, the study file's ``enqueue`` configurations are tabulated too, after the
    pool and outside it (``meta.warm_starts``), for the replay that plays them first."""
    import torch

    study = load_study(study_file, epochs=epochs, train_subset=train_subset, data_dir=data_dir)
    pool = sample_pool(study, size, pool_seed)
    table = load_table(out)
    seeds = sorted(set(seeds))
    warm = [dict(p) for p in study.settings.enqueue] if warm_starts else []
    table["meta"] = {
        "what": f"learning curves of a random pool of {study_file}'s space, trained by "
        "cnnopt.train.fit as its trials train",
        "kind": "pool",
        "command": command or table["meta"].get("command", ""),
        "study_file": str(study_file),
        "study_sha256": study.sha256,
        "pool_seed": pool_seed,
        "size": size,
        "pool": [config_key(p) for p in pool],
        "warm_starts": [config_key(p) for p in warm] or table["meta"].get("warm_starts", []),
        "epochs": epochs,
        "seeds": sorted(set(seeds) | set(table["meta"].get("seeds", []))),
        "dataset": study.base_config().data.dataset,
        "train_subset": train_subset,
        "val_fraction": VAL_FRACTION,
        "split_seed": SPLIT_SEED,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "note": "seconds are wall-clock per training epoch on a shared 2-core CPU; compare them "
        "only within this table",
    }
    # warm starts after the pool, indexed -1, -2, ...: never part of the random sample
    todo = [
        (i, p, s)
        for i, p in [*enumerate(pool), *((-1 - j, w) for j, w in enumerate(warm))]
        for s in seeds
        if len(table["runs"].get(run_key(p, s), {}).get("epochs", [])) < epochs
    ]
    if limit is not None:
        todo = todo[:limit]
    log(f"{len(todo)} runs to train ({len(table['runs'])} already in {out})")
    for n, (i, params, seed) in enumerate(todo, 1):
        t0 = time.perf_counter()
        run = train_config(study, params, seed) | {"index": i}
        table["runs"][run_key(params, seed)] = run
        save_table(table, out)
        last = run["epochs"][-1]
        log(
            f"[{n}/{len(todo)}] pool #{i} seed {seed} ({run['params']:,} params): val_accuracy "
            f"{last['val_accuracy']:.4f} in {time.perf_counter() - t0:.0f}s"
        )
    save_table(table, out)
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search.pool", description=__doc__)
    p.add_argument("--out", default=str(TABLE))
    p.add_argument("--study", default=STUDY_FILE)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--pool-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--train-subset", type=int, default=TRAIN_SUBSET)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="train at most this many runs")
    p.add_argument(
        "--warm-starts",
        action="store_true",
        help="also tabulate the study's enqueue (after the pool)",
    )
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    command = command_line("python -m benchmarks.search.pool", a)
    tabulate_pool(
        Path(a.out), study_file=a.study, size=a.size, pool_seed=a.pool_seed, seeds=a.seeds,
        data_dir=a.data_dir, epochs=a.epochs, train_subset=a.train_subset, command=command,
        limit=a.limit, warm_starts=a.warm_starts, log=lambda msg: print(msg, flush=True, file=sys.stdout),
    )  # fmt: skip


if __name__ == "__main__":
    main()
