"""Paired statistics over replay seeds: per-seed differences with percentile-bootstrap 95%
confidence intervals, the pruner choice on one set of seeds and the headline on fresh seeds.

Every variant of a comparison runs on the same replay seeds (same sampler seed, same training
seed), so the per-seed difference removes what the seed alone decides; the interval is for the mean
of those differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}] (n={self.n})"


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


# Student's t, two-sided 95% critical values for 1..30 degrees of freedom (scipy is not a
# dependency for one quantile); above 30, the Cornish-Fisher expansion is within 0.001
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_mean(values: Sequence[float]) -> Interval:
    """Mean of ``values`` with Student's t 95% interval. With a handful of seeds (the live
    studies) the percentile bootstrap is too narrow: it resamples only the values seen and
    ignores that the spread itself is estimated from them; the t interval accounts for that."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {x.size}")
    half = t_quantile(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    m = float(x.mean())
    return Interval(m, m - half, m + half, int(x.size))


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
