"""Replay random search over a tabulated random pool (``pool.py``'s table) with each pruner.

The pool is a seeded random sample of a study's whole space with one training seed, so a search
over it is random search: an order seed draws a random permutation of the pooled configurations,
and the permutation is played as a study. The study is a real Optuna study in memory with the real
pruner (``replay.PRUNERS``, as the grid replays build them): every trial reports the tabulated
value per epoch and asks ``should_prune`` (the last epoch never), until the epoch budget is spent;
a trial cut by the budget never completes. The per-trial step is the grid replay's own
(``replay.train_trial``), so both replays obey the same rules and give the same ``Replay`` objects.

Every pruner plays the same permutation for the same order seed: differences between pruners are
paired per order seed (the pool has one training seed, so the order is what varies).

    python -m benchmarks.search.section --out-dir benchmarks/search/results   # grid and pool
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from benchmarks.search.replay import PRUNERS, Replay, train_trial
from benchmarks.search.tabulate import config_key

# cnnopt's default pruner, as studies/fashion_cnn_bn.py sets it: successive halving, first rung at
# epoch 3 of 10 (what ``study.first_rung`` gives without min_resource: 30% of the epochs), the top
# half goes on.
DEFAULT_PRUNER = "sh3"
ASHA_LIKE = "sh1"  # rungs from epoch 1: Ray Tune's ASHA with grace_period=1, which R2 ran
NO_PRUNING = "none"


class PoolTable:
    """The pooled curves of one training seed: only runs with every epoch, in pool order."""

    def __init__(
        self,
        data: dict[str, Any],
        metric: str = "val_accuracy",
        seed: int | None = None,
        source: str = "pool table",
    ):
        self.meta = data.get("meta", {})
        if self.meta.get("kind") != "pool":
            raise ValueError(f"{source}: meta.kind is {self.meta.get('kind')!r}, not 'pool'")
        for key in ("epochs", "pool"):
            if key not in self.meta:
                raise ValueError(f"{source}: meta.{key} is missing")
        if "runs" not in data:
            raise ValueError(f"{source}: runs is missing")
        self.epochs: int = int(self.meta["epochs"])
        self.size: int = int(self.meta.get("size", len(self.meta["pool"])))  # the pool planned
        # the table's first training seed unless told (pool.py tabulates seed 0 alone by default)
        self.seed: int = int((self.meta.get("seeds") or [0])[0] if seed is None else seed)
        self.metric = metric
        self.curves: dict[str, list[float]] = {}
        self.seconds: dict[str, float] = {}
        for run in data["runs"].values():
            eps = run["epochs"]
            if int(run["seed"]) != self.seed or len(eps) < self.epochs:
                continue  # another training seed, or a run still training
            key = config_key(run["config"])
            self.curves[key] = [e[metric] for e in eps[: self.epochs]]
            # An epoch's price on the seconds axis: the configuration's median epoch time (as in
            # the grid's Table: wall-clock epochs on a shared CPU vary with the moment's load).
            self.seconds[key] = statistics.median(e["seconds"] for e in eps[: self.epochs])
        # the sampling order: every prefix of it is a random sample of the space
        self.order: list[str] = [k for k in self.meta["pool"] if k in self.curves]
        # the study file's warm starts, tabulated beside the pool (not part of it)
        self.warm: list[str] = [k for k in self.meta.get("warm_starts", []) if k in self.curves]
        if not self.order:
            raise ValueError(
                f"{source}: no pooled configuration has all {self.epochs} epochs "
                f"for training seed {self.seed}"
            )
        self.n_configs = len(self.order)

    @classmethod
    def load(cls, path: Path | str, **kw) -> PoolTable:
        return cls(json.loads(Path(path).read_text()), source=str(path), **kw)

    @property
    def complete(self) -> bool:
        """Every configuration of the planned pool is tabulated (else: a smaller random pool)."""
        return self.n_configs >= self.size

    def finals(self) -> list[float]:
        return [self.curves[k][-1] for k in self.order]

    def ceiling(self) -> float:
        """The pool's best final value (one training seed: no seed mean to take)."""
        return max(self.finals())

    def target(self, percentile: float = 90.0) -> float:
        """The pool's ``percentile``-th percentile final value: ~10% of the pool reaches the
        default one, so reaching it means finding a good configuration, not the single best
        (whose rank one training seed decides as much as the configuration)."""
        return float(np.percentile(self.finals(), percentile))

    def permutation(self, order_seed: int) -> list[str]:
        """The order in which order seed ``order_seed`` tries the pool (every pruner the same)."""
        idx = np.random.default_rng(order_seed).permutation(self.n_configs)
        return [self.order[i] for i in idx]


def variant_name(pruner: str, warm: bool = False) -> str:
    return f"random+{pruner}" + ("+warm" if warm else "")


def replay_pool(
    table: PoolTable, pruner: str, order_seed: int, budget: int = 120, warm: bool = False
) -> Replay:
    """Random search over the pool in the order of ``order_seed`` with pruner ``pruner`` (a key
    of ``replay.PRUNERS``) until ``budget`` epochs are trained or the pool is exhausted. With
    ``warm``, the study file's warm starts go first, trained to the end as cnnopt trains them
    (they enter every rung, so later trials are compared with them, but are never pruned)."""
    if pruner not in PRUNERS:
        raise ValueError(f"pruner {pruner!r} is not one of {sorted(PRUNERS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        # a fixed name: HyperbandPruner brackets trials by a hash of the study name
        study_name=f"pool-{pruner}-{order_seed}",
        direction="maximize",
        # the permutation is the search; the trials suggest nothing (pruners only read the
        # intermediate values), so the sampler is never consulted
        sampler=optuna.samplers.RandomSampler(seed=order_seed),
        pruner=PRUNERS[pruner](table.epochs),
    )
    out = Replay(variant_name(pruner, warm), order_seed, budget)
    first = table.warm if warm else []
    for n, key in enumerate([*first, *table.permutation(order_seed)]):
        if out.epochs >= budget:
            break
        trial = study.ask()
        trial.set_user_attr("config", key)
        out.trials += 1
        secs = [table.seconds[key]] * table.epochs
        train_trial(study, trial, key, table.curves[key], secs, out, prune=n >= len(first))
    else:
        out.exhausted = out.epochs < budget  # every pooled configuration tried, budget left
    return out


def replay_pool_many(
    table: PoolTable, pruners: list[str], order_seeds: range | list[int], budget: int = 120,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, list[Replay]]:  # fmt: skip
    """Every pruner on every order seed (same order seed = same permutation: paired)."""
    import time

    out: dict[str, list[Replay]] = {}
    for p in pruners:
        t0 = time.perf_counter()
        out[variant_name(p)] = [replay_pool(table, p, s, budget) for s in order_seeds]
        n = len(order_seeds)
        log(f"pool {variant_name(p)}: {1000 * (time.perf_counter() - t0) / n:.0f} ms per replay")
    return out
