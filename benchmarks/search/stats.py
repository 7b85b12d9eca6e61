"""Paired statistics over replay seeds: per-seed differences with percentile-bootstrap 95%
confidence intervals, the pruner choice on one set of seeds and the headline on fresh seeds.

Every variant of a comparison runs on the same replay seeds (same sampler seed, same training
seed), so the per-seed difference removes what the seed alone decides; the interval is for the mean
of those differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# The interval type and Student's t live in the package (the GPU check's final training reports a
# t interval too, and nothing in cnnopt/ may import this folder); re-exported here for the research.
from cnnopt.bench.common import Interval, t_mean, t_quantile

__all__ = [
    "Interval",
    "t_mean",
    "t_quantile",
    "bootstrap_mean",
    "paired",
    "choose",
    "capped",
    "band",
    "welch",
]


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = 10000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of ``values`` with a percentile-bootstrap interval (resampling the seeds)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(x.mean()), float(low), float(high), int(x.size))


def paired(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """Mean of the per-seed differences a - b with its bootstrap interval. Infinite values
    (a target never reached) are capped by the caller; here they would poison the mean."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = [x - y for x, y in zip(a, b, strict=True)]
    if not all(math.isfinite(v) for v in d):
        raise ValueError("paired differences must be finite (cap epochs-to-target first)")
    return bootstrap_mean(d, **kw)


def choose(
    candidates: dict[str, Sequence[float]],
    tie_break: dict[str, Sequence[float]] | None = None,
) -> str:
    """The candidate with the highest mean (the primary figure); ties, within 1e-9, go to the
    lowest mean of ``tie_break`` (e.g. epochs to target)."""

    def key(name: str) -> tuple[float, float]:
        primary = float(np.mean(candidates[name]))
        second = float(np.mean(tie_break[name])) if tie_break else 0.0
        return (round(primary, 9), -second)

    return max(candidates, key=key)


def capped(values: Sequence[float], cap: float) -> list[float]:
    """Epochs (or seconds) to target with 'never' counted as ``cap`` (e.g. budget + 1 trial)."""
    return [min(v, cap) for v in values]


def band(curves: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Mean and pointwise 95% bootstrap band of many curves (rows: seeds, columns: x)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, curves.shape[0], size=(resamples, curves.shape[0]))
    means = curves[idx].mean(axis=1)
    return curves.mean(axis=0), np.quantile(means, 0.025, axis=0), np.quantile(means, 0.975, axis=0)


Metric = Callable[[object], float]


def welch(a: Sequence[float], b: Sequence[float]) -> Interval:
    """Mean of ``a`` minus mean of ``b`` with Welch's t 95% interval: two groups that share no
    pairing (studies of two search spaces on different seeds: a study seed draws unrelated
    configurations in each space, so pairing by seed would remove nothing). The degrees of
    freedom are Welch-Satterthwaite's, rounded down (the conservative side)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"Welch's interval needs 2 values per group, got {x.size} and {y.size}")
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    d = float(x.mean() - y.mean())
    if se == 0:
        return Interval(d, d, d, int(x.size + y.size))
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = t_quantile(max(1, math.floor(df))) * se
    return Interval(d, d - half, d + half, int(x.size + y.size))
