"""Axes that read at a glance: numeric categories in numeric order, a bounded metric's axis fitted
to its data."""

from __future__ import annotations

import math
from typing import Any

# -- axes ----------------------------------------------------------------------------------------


def order_key(v: Any) -> tuple[int, float, str]:
    """Sort key of a category: numbers (and labels that read as numbers) by value, then the rest
    alphabetically. Booleans are categories, not numbers."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    try:
        return (0, float(str(v)), "")
    except ValueError:
        return (1, 0.0, str(v))


def sort_numeric_categories(fig: Any) -> None:
    """Order every category axis whose labels are all numbers by value (Optuna's slice plot keeps
    the order of the choices list, plotly the order of appearance)."""

    def fix(axis: Any) -> None:
        labels = list(axis.categoryarray or [])
        if labels and all(order_key(v)[0] == 0 for v in labels):
            axis.update(categoryorder="array", categoryarray=sorted(labels, key=order_key))

    fig.for_each_xaxis(fix)
    fig.for_each_yaxis(fix)


def bounded_metric(metric: str) -> bool:
    """Accuracy-like metrics live in [0, 1]; losses do not."""
    return "loss" not in metric.lower()


def fit_value_axes(fig: Any, metric: str) -> tuple[float, float] | None:
    """Set every y axis of a figure whose y values are the metric to the data's span plus a 5%
    margin, inside [0, 1] for a bounded metric. Returns the range set (None: no data)."""
    ys = [
        float(v)
        for tr in fig.data
        if getattr(tr, "y", None) is not None
        for v in tr.y
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    if bounded_metric(metric) and lo >= 0 and hi <= 1:
        margin = max(0.05 * (hi - lo), 0.01)
        lo, hi = max(0.0, lo - margin), min(1.0, hi + margin)
    else:
        margin = max(0.05 * (hi - lo), 0.01 * abs(hi), 1e-6)
        lo, hi = lo - margin, hi + margin
    fig.for_each_yaxis(lambda ax: ax.update(range=[lo, hi], autorange=False))
    return lo, hi
