"""Early stopping for accuracy-versus-cost (Pareto) studies, on plain numbers.

Optuna refuses ``trial.report`` in a multi-objective study, so none of its pruners can stop a
trial of one. cnnopt can, because the second objective of its Pareto studies is a cost (parameters,
FLOPs, latency) known before the first epoch: at a rung only the accuracy is still a guess, and
the comparison is between (accuracy at this rung, cost) points of the trials that reached it.

Rungs are successive halving's: ``min_resource * reduction_factor**k`` epochs, before the last
epoch (the study's ``min_resource``, default 30% of the epochs, and ``reduction_factor``). At a
rung a trial goes on when it ranks within the top ``max(1, n // reduction_factor)`` of the ``n``
points there (itself included), as Optuna's asynchronous successive halving keeps the top
``1 / reduction_factor`` of a rung, counting ties in the trial's favour. Two orders are offered:

- ``"nds"``: MO-ASHA's (Schmucker et al. 2021, Syne Tune): non-dominated sorting, then NSGA-II's
  crowding distance inside a front (the extremes of a front first). A point is behind only the
  points of better fronts and the more isolated points of its own front.
- ``"cheaper"``: successive halving among the trials that cost no more: a trial is ranked by its
  accuracy against only the points whose every cost is at most its own. A point of the rung's
  front is never behind anybody (no cheaper point is as accurate), so the rung's front always
  goes on; an expensive trial must beat most of the cheaper ones to justify its cost.

Which order the shipped default uses was chosen by replaying the committed pool of learning curves
(benchmarks/search/pareto_replay.py; docs/budgets-pareto.md).

Everything here takes plain inputs (lists of numbers), so the rule is tested on hand-made rungs;
``objective.Objective`` gathers the points from the study's trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RULES = ("nds", "cheaper")

Point = tuple[float, tuple[float, ...]]  # (metric at the rung, costs): costs are minimised


def rungs(first: int, reduction_factor: int, epochs: int) -> tuple[int, ...]:
    """Successive halving's rungs: ``first * factor**k`` epochs, strictly before ``epochs`` (the
    last epoch is never a rung: its trial is done)."""
    out, r = [], max(1, first)
    while r < epochs:
        out.append(r)
        r *= max(2, reduction_factor)
    return tuple(out)


def _losses(points: Sequence[Point], maximize: bool) -> np.ndarray:
    """Points as rows to minimise: the metric negated when it is maximised."""
    sign = -1.0 if maximize else 1.0
    return np.array([[sign * v, *map(float, c)] for v, c in points], dtype=float)


def nondominated_ranks(losses: np.ndarray) -> np.ndarray:
    """Front number of each row (0: not dominated), all columns minimised."""
    n = len(losses)
    ranks = np.full(n, -1)
    left = np.arange(n)
    front = 0
    while left.size:
        sub = losses[left]
        le = (sub[:, None, :] <= sub[None, :, :]).all(-1)
        lt = (sub[:, None, :] < sub[None, :, :]).any(-1)
        dominated = (le & lt).any(0)  # column j is dominated by some row i
        ranks[left[~dominated]] = front
        left = left[dominated]
        front += 1
    return ranks


def crowding(losses: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row within its set (extremes: infinite)."""
    n, d = losses.shape
    out = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(d):
        order = np.argsort(losses[:, j], kind="stable")
        col = losses[order, j]
        span = col[-1] - col[0]
        out[order[0]] = out[order[-1]] = math.inf
        if span > 0:
            out[order[1:-1]] += (col[2:] - col[:-2]) / span
    return out


def ahead_of(own: Point, others: Sequence[Point], maximize: bool, rule: str = "nds") -> int:
    """How many of ``others`` rank strictly before ``own`` at a rung, under ``rule``."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {', '.join(RULES)}")
    if not others:
        return 0
    if rule == "cheaper":
        v, c = own
        return sum(
            1
            for ov, oc in others
            if all(a <= b for a, b in zip(oc, c, strict=True)) and (ov > v if maximize else ov < v)
        )
    losses = _losses([own, *others], maximize)
    ranks = nondominated_ranks(losses)
    same = np.flatnonzero(ranks == ranks[0])
    dist = np.full(len(losses), -math.inf)
    dist[same] = crowding(losses[same])
    better_front = ranks[1:] < ranks[0]
    more_isolated = (ranks[1:] == ranks[0]) & (dist[1:] > dist[0])
    return int((better_front | more_isolated).sum())


def keep_count(n: int, reduction_factor: int) -> int:
    """How many of ``n`` points at a rung go on (at least one: the first at a rung always does)."""
    return max(1, n // reduction_factor)


def survives(
    own: Point,
    others: Sequence[Point],
    reduction_factor: int,
    maximize: bool = True,
    rule: str = "nds",
) -> bool:
    """Does the trial at ``own`` go on past this rung, given the ``others`` recorded there?"""
    return ahead_of(own, others, maximize, rule) < keep_count(len(others) + 1, reduction_factor)


@dataclass(frozen=True)
class RungPruner:
    """The study's rule: at which epochs it decides, and how."""

    rungs: tuple[int, ...]
    reduction_factor: int = 2
    maximize: bool = True
    rule: str = "nds"

    def decides_at(self, epoch: int) -> bool:
        return epoch in self.rungs

    def should_stop(self, own: Point, others: Sequence[Point]) -> bool:
        return not survives(own, others, self.reduction_factor, self.maximize, self.rule)


# -- fronts and hypervolume (status, report, export and the replay) ------------------------------


def front_mask(points: Sequence[Point], maximize: bool = True) -> list[bool]:
    """Which points are on the Pareto front (no other point at least as good everywhere and
    better somewhere)."""
    if not points:
        return []
    return [bool(r == 0) for r in nondominated_ranks(_losses(points, maximize))]


def hypervolume(points: Sequence[Point], reference: Point, maximize: bool = True) -> float:
    """The area (volume) dominated by ``points`` and bounded by ``reference`` (Optuna's exact
    hypervolume); points not better than the reference in every objective add nothing."""
    ref = _losses([reference], maximize)[0]
    losses = _losses(points, maximize) if points else np.zeros((0, len(ref)))
    losses = losses[(losses < ref).all(1)] if len(losses) else losses
    if not len(losses):
        return 0.0
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(losses, ref))
