"""Axes that read at a glance: numeric categories in numeric order, a bounded metric's axis fitted
to its data."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
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


# -- grids that fit the page ----------------------------------------------------------------------
# The page is at most 1,100 px wide (page.py's CSS). Optuna draws a slice plot as one row of
# 300 px panels (a 16-parameter study: 4,800 px) and its parallel coordinates as one row of axes
# (17 axes 60 px apart, their labels on top of each other); both wrap here into rows.

SLICE_COLUMNS = 4  # panels per row: about 250 px each on the page
SLICE_ROW_PX = 300
PARALLEL_AXES = 7  # axes per row of the parallel coordinates, the value's included
PARALLEL_ROW_PX = 330


def _suffix(axis_ref: str) -> int:
    """1 for "x" or "y", n for "x<n>"."""
    return int(axis_ref[1:] or 1)


def wrap_subplots(fig: Any, cols: int = SLICE_COLUMNS, row_px: int = SLICE_ROW_PX) -> int:
    """Lay a one-row figure of panels (Optuna's slice plot) out as a grid of ``cols`` columns, in
    place: each panel keeps its axes, only their domains move; the value axis shows its ticks and
    title in the first column. The figure's fixed width is dropped (it fills the page). Returns
    the number of rows."""
    n = max([_suffix(tr.xaxis or "x") for tr in fig.data] + [1])
    fig.layout.width = None
    if n == 1:
        return 1
    cols = min(cols, n)  # two panels share the width, not half of it
    rows = math.ceil(n / cols)
    height = rows * row_px + 60
    hgap, vgap = 0.05, min(0.3, 90 / height)  # room for the x axis title under each panel
    w = (1 - hgap * (cols - 1)) / cols
    h = (1 - vgap * (rows - 1)) / rows
    title = fig.layout.yaxis.title.text
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y1 = c * (w + hgap), 1 - r * (h + vgap)
        xa, ya = ("xaxis", "yaxis") if i == 0 else (f"xaxis{i + 1}", f"yaxis{i + 1}")
        fig.layout[xa].domain = [x0, min(1.0, x0 + w)]
        fig.layout[ya].domain = [max(0.0, y1 - h), y1]
        fig.layout[ya].showticklabels = c == 0
        fig.layout[ya].title.text = title if c == 0 else None
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "b": 40})
    return rows


def _balanced(items: list, per_row: int) -> list[list]:
    """``items`` in consecutive rows of at most ``per_row``, the rows' lengths within one."""
    rows = max(1, math.ceil(len(items) / per_row))
    size, extra = divmod(len(items), rows)
    out, i = [], 0
    for r in range(rows):
        k = size + (r < extra)
        out.append(items[i : i + k])
        i += k
    return out


def wrap_parallel(
    fig: Any, n_values: int = 1, per_row: int = PARALLEL_AXES, row_px: int = PARALLEL_ROW_PX
) -> Any:
    """Optuna's parallel coordinates (one scatter line per trial across numbered axes, the first
    ``n_values`` of them the objective) as rows of at most ``per_row`` axes, each row starting
    with the value axes again so that every row reads on its own. Returns a new figure (the same
    one when a single row holds every axis)."""
    import plotly.graph_objects as go

    ticktext = list(fig.layout.xaxis.ticktext or [])
    n_dims = len(ticktext)
    if n_dims <= per_row:
        return fig
    groups = [
        list(range(n_values)) + g
        for g in _balanced(list(range(n_values, n_dims)), per_row - n_values)
    ]
    rows = len(groups)
    height = rows * row_px + 60
    vgap = min(0.3, 50 / height)
    h = (1 - vgap * (rows - 1)) / rows
    out = go.Figure(layout=fig.layout)
    out.layout.annotations, out.layout.shapes = (), ()
    widest = max(len(g) for g in groups)  # one x range for all rows: the axes line up in columns
    lines = [tr for tr in fig.data if tr.mode == "lines" and tr.customdata]
    others = [tr for tr in fig.data if not (tr.mode == "lines" and tr.customdata)]
    annotations, shapes = [], []
    for r, dims in enumerate(groups):
        xa, ya = ("x", "y") if r == 0 else (f"x{r + 1}", f"y{r + 1}")
        key = "" if r == 0 else str(r + 1)
        y1 = 1 - r * (h + vgap)
        out.layout[f"xaxis{key}"] = {
            **fig.layout.xaxis.to_plotly_json(),
            "tickvals": list(range(len(dims))),
            "ticktext": [ticktext[d] for d in dims],
            "range": (-0.2, widest - 0.8),
            "anchor": ya,
            "side": "bottom",
        }
        out.layout[f"yaxis{key}"] = {
            **fig.layout.yaxis.to_plotly_json(),
            "domain": [max(0.0, y1 - h), y1],
            "anchor": xa,
        }
        where = {d: j for j, d in enumerate(dims)}
        for tr in lines:
            out.add_trace(
                go.Scatter(
                    tr.to_plotly_json(),
                    x=list(range(len(dims))),
                    y=[tr.y[d] for d in dims],
                    customdata=[tr.customdata[d] for d in dims],
                    xaxis=xa,
                    yaxis=ya,
                )
            )
        for a in fig.layout.annotations:
            if a.x in where:
                annotations.append({**a.to_plotly_json(), "x": where[a.x], "xref": xa, "yref": ya})
        for s in fig.layout.shapes:
            if s.x0 in where:
                x = where[s.x0]
                shapes.append({**s.to_plotly_json(), "x0": x, "x1": x, "xref": xa, "yref": ya})
    for tr in others:  # the colour scale and the legend's entries
        out.add_trace(tr)
    out.update_layout(annotations=annotations, shapes=shapes, height=height)
    return out


# -- heat map columns -----------------------------------------------------------------------------

QUANTILES = 4  # bins of a continuous parameter that does not span two decades


def _num(v: float) -> str:
    return f"{v:.3g}"


def bins(
    values: list[Any], distribution: Any
) -> tuple[Callable[[Any], str], list[str], str] | None:
    """Heat map columns of a continuous parameter: (label of a value, labels in order, how they
    were made, for the caption); None for a discrete one (categorical, int, a float with a step,
    or a value not sampled at all), which keeps one column per value.

    A log-uniform parameter (a learning rate) is binned into decades when its values span two or
    more, else into quartiles, as is a uniform one: a continuous parameter has a distinct value
    per trial, and one column per value would give every trial its own column."""
    from optuna.distributions import FloatDistribution

    if not isinstance(distribution, FloatDistribution) or distribution.step is not None:
        return None
    xs = sorted({float(v) for v in values})
    if distribution.log:
        # the epsilon keeps 0.01 (log10 -1.9999999999999996 on some platforms) in its own decade
        decades = sorted({math.floor(math.log10(v) + 1e-9) for v in xs})
        if len(decades) >= 2:

            def decade(v: Any) -> str:
                k = math.floor(math.log10(float(v)) + 1e-9)
                return f"[{_num(10.0**k)}, {_num(10.0 ** (k + 1))})"

            return decade, [decade(10.0**k) for k in decades], "decades"
    if len(xs) <= QUANTILES:
        return None  # few distinct values: each is its own column already
    # equal numbers of distinct values per bin; a bin starts at its smallest value
    size, extra = divmod(len(xs), QUANTILES)
    starts, i = [], 0
    for q in range(QUANTILES):
        starts.append(xs[i])
        i += size + (q < extra)
    ends = [*starts[1:], xs[-1]]
    labels = [
        f"[{_num(lo)}, {_num(hi)}{']' if q == QUANTILES - 1 else ')'}"
        for q, (lo, hi) in enumerate(zip(starts, ends, strict=True))
    ]

    def quantile(v: Any) -> str:
        return labels[max(0, bisect.bisect_right(starts, float(v)) - 1)]

    return quantile, labels, "quartiles"
