"""`cnnopt report`: one self-contained HTML file of plotly figures about a study.

It opens with a summary (best trial, trials by state, epochs trained and saved, wall time, the
dashboard command), then the figures, then a table of every trial.

Optuna's own plotly figures (optimization history, importances, parallel coordinates, slices,
intermediate values) are used, with three corrections so that they read at a glance:
- categories that are numbers are ordered as numbers (batch 32, 64, 128, never order of appearance);
- an axis of a bounded metric (accuracy, F1) spans the data with a small margin inside [0, 1]
  (plotly's autorange of a few points spans 0 to 1.8);
- with few complete trials, slices and parallel coordinates also show pruned trials at their last
  reported value, marked, and their caption says so.
What Optuna lacks is written here:
- a learning rate x batch size heat map (report R4's table),
- a BatchNorm placement x activation heat map (report R3's figure 7); a heat map's colours compare
  like with like: final values of complete trials, or every trial's value at the last epoch all of
  them reached, never epoch-1 values of pruned trials beside epoch-10 values of complete ones;
- the value against FLOPs and against parameter count, with the Pareto front marked.

A trial that reused an earlier identical configuration's result (user attribute ``duplicate_of``,
the original's number) trained nothing: it is counted in the summary, marked in the trials table,
and left out of the figures that would show its original's point twice.

plotly.js is embedded once, inline, so the file works offline. A figure whose parameters a study
does not have is replaced by a one-line note, never an error.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from cnnopt.config import KEY_SECTION
from cnnopt.status import load_study, study_status
from cnnopt.storage import default_url, mask_url

# Below this many complete trials, slices and parallel coordinates add the pruned trials (at their
# last reported value): three points say little, and pruned trials are most of a pruned study.
FEW_COMPLETE = 10
# How many trials the trials table lists (the best ones first when there are more).
TABLE_ROWS = 500


@dataclass
class Section:
    key: str  # the figure's div id is fig-<key>
    title: str
    figure: Any = None  # plotly Figure, or None with a note
    note: str = ""
    caption: str = ""  # what the figure shows, when that is not obvious (which trials, which epoch)


# -- values of a trial ---------------------------------------------------------------------------


def trial_value_of(t: FrozenTrial, key: str) -> Any:
    """A flat config key of a trial: from its params, else from its stored resolved config."""
    if key in t.params:
        return t.params[key]
    cfg = t.user_attrs.get("config")
    section = KEY_SECTION.get(key)
    if isinstance(cfg, dict) and section and key in cfg.get(section, {}):
        v = cfg[section][key]
        return tuple(v) if isinstance(v, list) else v
    return None


def duplicate_of(t: FrozenTrial) -> int | None:
    """The number of the trial whose result this one reused, or None (it trained itself)."""
    v = t.user_attrs.get("duplicate_of")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def epochs_reached(t: FrozenTrial) -> int:
    """The last epoch of a trial's curve: its last intermediate step, else its stored history."""
    if t.intermediate_values:
        return int(max(t.intermediate_values))
    hist = t.user_attrs.get("history")
    if isinstance(hist, list):
        epochs = [h.get("epoch") for h in hist if isinstance(h, dict)]
        return max((int(e) for e in epochs if isinstance(e, int | float)), default=0)
    return 0


def epochs_trained(t: FrozenTrial) -> int:
    """Epochs this trial itself trained: none for a duplicate; a trial resumed from a checkpoint
    carries its original's first epochs in its curve, and those were trained (and are counted) by
    the original."""
    if duplicate_of(t) is not None:
        return 0
    resumed = t.user_attrs.get("resumed_from_epoch") or 0
    return max(0, epochs_reached(t) - int(resumed))


def value_at(t: FrozenTrial, epoch: int) -> float | None:
    """The trial's intermediate value at ``epoch``, or at the last step it reported before it."""
    steps = [s for s, v in t.intermediate_values.items() if s <= epoch and math.isfinite(v)]
    return float(t.intermediate_values[max(steps)]) if steps else None


def last_value(t: FrozenTrial) -> float | None:
    """A complete trial's value; a pruned trial's last finite intermediate value."""
    if t.state == TrialState.COMPLETE:
        return float(t.value) if t.value is not None and math.isfinite(t.value) else None
    steps = [s for s, v in t.intermediate_values.items() if math.isfinite(v)]
    return float(t.intermediate_values[max(steps)]) if steps else None


def _complete(ostudy: optuna.Study) -> list[FrozenTrial]:
    """Complete trials with a finite value, duplicates left out (their point is their original's)."""
    return [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and duplicate_of(t) is None
    ]


def _pruned(ostudy: optuna.Study) -> list[FrozenTrial]:
    """Pruned trials that reported a value before they were cut, duplicates left out."""
    return [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if duplicate_of(t) is None and last_value(t) is not None
    ]


def _n_complete(ostudy: optuna.Study) -> int:
    """Complete trials as Optuna's own figures count them (duplicates included)."""
    return len(ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _finished(ostudy: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, and pruned ones that reported a value before they were cut."""
    return sorted(_complete(ostudy) + _pruned(ostudy), key=lambda t: t.number)


def comparable_values(trials: list[FrozenTrial]) -> tuple[dict[int, float], int | None]:
    """Values of ``trials`` (by trial number) that compare like with like, and the epoch they are
    taken at (None: each complete trial's final value).

    Final values when every trial is complete and all reached the same epoch (or none reported
    intermediate values); else every trial's value at the largest epoch all of them reached
    (trials without intermediate values cannot be placed there and are left out)."""
    reached = {epochs_reached(t) for t in trials if t.intermediate_values}
    if all(t.state == TrialState.COMPLETE for t in trials) and len(reached) <= 1:
        return {t.number: float(t.value) for t in trials}, None
    curves = [t for t in trials if t.intermediate_values]
    common = min(epochs_reached(t) for t in curves)
    out = {t.number: value_at(t, common) for t in curves}
    return {n: v for n, v in out.items() if v is not None}, common


def _better(ostudy: optuna.Study) -> Callable[[float, float], bool]:
    if ostudy.direction == optuna.study.StudyDirection.MINIMIZE:
        return lambda a, b: a < b
    return lambda a, b: a > b


def _metric(ostudy: optuna.Study) -> str:
    return str(ostudy.user_attrs.get("metric", "objective value"))


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


# -- figures Optuna lacks ------------------------------------------------------------------------


def _lr_bins(values: list[float]) -> tuple[Callable[[float], str], list[str]]:
    """Labels for learning rates: the values themselves when few, else half-decade bins."""
    distinct = sorted(set(values))
    if len(distinct) <= 8:
        labels = list(dict.fromkeys(f"{v:.3g}" for v in distinct))
        return (lambda v: f"{v:.3g}"), labels

    def exponent(v: float) -> float:
        return math.floor(2 * math.log10(v)) / 2

    def fmt(e: float) -> str:
        return f"{10**e:.2g}-{10 ** (e + 0.5):.2g}"

    return (lambda v: fmt(exponent(v))), [fmt(e) for e in sorted({exponent(v) for v in values})]


def _ordered(values: set, first: list | None) -> list[str]:
    """Category labels: the given order first, then the rest, numbers by value."""
    first = [v for v in (first or []) if v in values]
    return [str(v) for v in first + sorted((v for v in values if v not in first), key=order_key)]


def heatmap(
    ostudy: optuna.Study,
    x_key: str,
    y_key: str,
    title: str,
    x_order: list | None = None,
    y_order: list | None = None,
    bin_x: bool = False,
) -> Section:
    """Best value per (x, y) cell, with the trial count in each cell.

    One colour scale must compare like with like. When the complete trials fill every cell that
    the pruned ones do, cells hold the complete trials' final values; otherwise every finished
    trial's value at the last epoch all of them reached (comparable_values). The caption says
    which."""
    import plotly.graph_objects as go

    key = f"{x_key}-x-{y_key}"
    trials = _finished(ostudy)
    pts = [(trial_value_of(t, x_key), trial_value_of(t, y_key), t) for t in trials]
    pts = [(x, y, t) for x, y, t in pts if x is not None and y is not None]
    if not pts:
        missing = [k for k in (x_key, y_key) if all(trial_value_of(t, k) is None for t in trials)]
        why = (
            "no finished trials yet"
            if not trials
            else f"{' and '.join(missing) or x_key + '/' + y_key} not recorded in this study"
        )
        return Section(key, title, note=f"skipped: {why}")
    xs, ys = {p[0] for p in pts}, {p[1] for p in pts}
    if len(xs) < 2 and len(ys) < 2:
        return Section(
            key,
            title,
            note=f"skipped: {x_key} and {y_key} are not searched in this study "
            f"({x_key}={next(iter(xs))}, {y_key}={next(iter(ys))})",
        )
    if bin_x:
        label, x_labels = _lr_bins([float(p[0]) for p in pts])
        pts = [(label(float(x)), str(y), t) for x, y, t in pts]
    else:
        x_labels = _ordered(xs, x_order)
        pts = [(str(x), str(y), t) for x, y, t in pts]
    y_labels = _ordered(ys, y_order)

    complete = [p for p in pts if p[2].state == TrialState.COMPLETE]
    n_pruned = len(pts) - len(complete)
    if complete and {(x, y) for x, y, _ in complete} == {(x, y) for x, y, _ in pts}:
        pts = complete  # the pruned trials fill no cell of their own
    values, epoch = comparable_values([t for _, _, t in pts])
    pts = [p for p in pts if p[2].number in values]
    shown_pruned = sum(t.state == TrialState.PRUNED for _, _, t in pts)
    metric = _metric(ostudy)
    if epoch is None:
        caption = f"Final {metric} of the {len(pts)} complete trials"
        if n_pruned:
            caption += f"; the {n_pruned} pruned trials are left out (they fill no other cell)"
        scale = f"best final {metric}"
    else:
        caption = (
            f"{metric} at epoch {epoch}, the last epoch all {len(pts)} trials shown reached "
            f"({len(pts) - shown_pruned} complete, {shown_pruned} pruned), so that every cell "
            "compares the same epoch"
        )
        scale = f"best {metric}<br>at epoch {epoch}"
    caption += "; each cell shows its best value and n, its number of trials."

    better = _better(ostudy)
    best: dict[tuple[str, str], tuple[float, int, int]] = {}  # value, count, trial number
    for x, y, t in pts:
        v, n, num = best.get((x, y), (None, 0, -1))
        tv = values[t.number]
        if v is None or better(tv, v):
            v, num = tv, t.number
        best[(x, y)] = (v, n + 1, num)
    z = [[best.get((x, y), (None,))[0] for x in x_labels] for y in y_labels]
    text = [
        [
            f"{best[(x, y)][0]:.4f}<br>n={best[(x, y)][1]}" if (x, y) in best else ""
            for x in x_labels
        ]
        for y in y_labels
    ]
    custom = [[best.get((x, y), (0, 0, -1))[2] for x in x_labels] for y in y_labels]
    at = "final" if epoch is None else f"at epoch {epoch}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x_labels,
            y=y_labels,
            text=text,
            texttemplate="%{text}",
            customdata=custom,
            colorscale="Viridis",
            reversescale=ostudy.direction == optuna.study.StudyDirection.MINIMIZE,
            colorbar={"title": scale},
            hovertemplate=f"{x_key} %{{x}}<br>{y_key} %{{y}}<br>best {at} %{{z:.4f}} "
            "(trial #%{customdata})<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis={
            "title": x_key,
            "type": "category",
            "categoryorder": "array",
            "categoryarray": x_labels,
        },
        yaxis={
            "title": y_key,
            "type": "category",
            "categoryorder": "array",
            "categoryarray": y_labels,
        },
    )
    return Section(key, title, fig, caption=caption)


def pareto_front(points: list[tuple[float, float, int]], maximize: bool) -> list[int]:
    """Indices of the points (cost, value, _) not dominated: no other point is at most as costly
    and at least as good, and strictly one of the two."""
    order = sorted(
        range(len(points)),
        key=lambda i: (points[i][0], -points[i][1] if maximize else points[i][1]),
    )
    front, best = [], None
    for i in order:
        v = points[i][1]
        if best is None or (v > best if maximize else v < best):
            front.append(i)
            best = v
    return front


def cost_scatter(ostudy: optuna.Study, attr: str, label: str) -> Section:
    import plotly.graph_objects as go

    key = f"pareto-{attr}"
    title = f"{_metric(ostudy)} against {label}, Pareto front"
    pts = [
        (float(t.user_attrs[attr]), float(t.value), t.number)
        for t in _complete(ostudy)
        if isinstance(t.user_attrs.get(attr), int | float) and t.user_attrs[attr] > 0
    ]
    if not pts:
        return Section(key, title, note=f"skipped: no complete trial has the {attr} attribute")
    maximize = ostudy.direction == optuna.study.StudyDirection.MAXIMIZE
    front = pareto_front(pts, maximize)
    front_pts = [pts[i] for i in front]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in pts],
            y=[p[1] for p in pts],
            mode="markers",
            name="trials",
            marker={"color": "#8aa6c1", "size": 8},
            customdata=[p[2] for p in pts],
            hovertemplate=f"trial #%{{customdata}}<br>{label} %{{x:.3s}}<br>%{{y:.4f}}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in front_pts],
            y=[p[1] for p in front_pts],
            mode="lines+markers",
            line={"shape": "hv", "color": "#d62728"},
            marker={"size": 11, "symbol": "diamond"},
            name="Pareto front",
            customdata=[p[2] for p in front_pts],
            hovertemplate=f"trial #%{{customdata}}<br>{label} %{{x:.3s}}<br>%{{y:.4f}}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis={"title": f"{label} (log)", "type": "log"},
        yaxis={"title": _metric(ostudy)},
    )
    fit_value_axes(fig, _metric(ostudy))
    caption = f"Final {_metric(ostudy)} of the {len(pts)} complete trials (pruned ones have none)."
    return Section(key, title, fig, caption=caption)


def learning_curves(ostudy: optuna.Study) -> Section:
    """Optuna's intermediate values plot, pruned trials dotted and ended with a cross."""
    import plotly.graph_objects as go

    title = "Learning curves (intermediate values; pruned trials dotted, cut at the cross)"
    trials = {t.number: t for t in ostudy.get_trials(deepcopy=False)}
    if not any(t.intermediate_values for t in trials.values()):
        return Section(
            "learning-curves", title, note="skipped: no trial reported intermediate values"
        )
    fig = optuna.visualization.plot_intermediate_values(ostudy)
    pruned_x, pruned_y, pruned_n = [], [], []
    for tr in fig.data:
        number = int(str(tr.name).removeprefix("Trial"))
        t = trials.get(number)
        if t is not None and t.state == TrialState.PRUNED:
            tr.line = {"dash": "dot"}
            tr.opacity = 0.6
            tr.name = f"Trial{number} (pruned)"
            if tr.x:
                pruned_x.append(tr.x[-1])
                pruned_y.append(tr.y[-1])
                pruned_n.append(number)
    if pruned_x:
        fig.add_trace(
            go.Scatter(
                x=pruned_x,
                y=pruned_y,
                mode="markers",
                marker={"symbol": "x", "size": 11, "color": "#d62728"},
                name="pruned here",
                customdata=pruned_n,
                hovertemplate="trial #%{customdata} pruned at epoch %{x}<extra></extra>",
            )
        )
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=_metric(ostudy))
    fit_value_axes(fig, _metric(ostudy))
    return Section("learning-curves", title, fig)


# -- Optuna's figures, with pruned trials where they help -----------------------------------------

# Extra axes of the parallel coordinates when pruned trials are drawn. Optuna orders the axes by
# name: the brackets put these two first, beside the value they qualify.
STATE_DIM, EPOCH_DIM = "(trial state)", "(epoch of value)"


def with_pruned(ostudy: optuna.Study) -> tuple[optuna.Study, list[FrozenTrial]]:
    """An in-memory copy of the finished trials in which every pruned trial is complete with its
    last reported value, for Optuna's figures (they draw complete trials only). Copy trial i is
    the returned list's trial i. Each copy also carries two parameters for the parallel
    coordinates: its state and the epoch its value is from."""
    originals = _finished(ostudy)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        copy = optuna.create_study(direction=ostudy.direction)
    finally:
        optuna.logging.set_verbosity(level)
    top = max([epochs_reached(t) for t in originals] + [1])
    for t in originals:
        copy.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=last_value(t),
                params={
                    **t.params,
                    STATE_DIM: t.state.name.lower(),
                    EPOCH_DIM: max(1, epochs_reached(t)),
                },
                distributions={
                    **t.distributions,
                    STATE_DIM: CategoricalDistribution(["complete", "pruned"]),
                    EPOCH_DIM: IntDistribution(1, top),
                },
            )
        )
    return copy, originals


def _searched(complete: list[FrozenTrial], pruned: list[FrozenTrial]) -> list[str]:
    """The parameters the slices and parallel coordinates show: those of the trials they draw."""
    shown = complete if len(complete) >= FEW_COMPLETE or not pruned else complete + pruned
    return sorted({p for t in shown for p in t.params})


def _mixed_caption(ostudy: optuna.Study, n_complete: int, n_pruned: int, how: str) -> str:
    return (
        f"{n_complete} complete trials and {n_pruned} pruned ones at their last reported "
        f"{_metric(ostudy)} ({how}): with fewer than {FEW_COMPLETE} complete trials the pruned "
        "ones are shown too. A pruned trial's value is from an earlier epoch than a complete one's."
    )


def slices(ostudy: optuna.Study) -> Section:
    title, metric = "Slices", _metric(ostudy)
    complete, pruned = _complete(ostudy), _pruned(ostudy)
    params = _searched(complete, pruned)
    if not params:
        return Section("slices", title, note="skipped: no finished trial with searched parameters")
    if len(complete) >= FEW_COMPLETE or not pruned:
        section = _optuna_section(
            "slices",
            title,
            lambda: optuna.visualization.plot_slice(ostudy, params=params, target_name=metric),
        )
        section.caption = f"Final {metric} of the {_n_complete(ostudy)} complete trials."
    else:
        copy, originals = with_pruned(ostudy)
        section = _optuna_section(
            "slices",
            title,
            lambda: optuna.visualization.plot_slice(copy, params=params, target_name=metric),
        )
        if section.figure is not None:
            for tr in section.figure.data:
                if tr.name != "Feasible Trial" or tr.marker.color is None:
                    continue
                ts = [originals[int(i)] for i in tr.marker.color]
                tr.marker.color = [t.number for t in ts]
                tr.marker.symbol = ["x" if t.state == TrialState.PRUNED else "circle" for t in ts]
                tr.marker.size = 9
                tr.hovertext = [
                    f"trial #{t.number}, "
                    + (
                        f"pruned at epoch {epochs_reached(t)}"
                        if t.state == TrialState.PRUNED
                        else "complete"
                    )
                    for t in ts
                ]
            section.caption = _mixed_caption(
                ostudy, len(complete), len(pruned), "crosses; circles are complete trials"
            )
    if section.figure is not None:
        sort_numeric_categories(section.figure)
        fit_value_axes(section.figure, metric)
    return section


def parallel_coordinates(ostudy: optuna.Study) -> Section:
    title, metric = "Parallel coordinates", _metric(ostudy)
    complete, pruned = _complete(ostudy), _pruned(ostudy)
    params = _searched(complete, pruned)
    if not params:
        return Section(
            "parallel", title, note="skipped: no finished trial with searched parameters"
        )
    if len(complete) >= FEW_COMPLETE or not pruned:
        section = _optuna_section(
            "parallel",
            title,
            lambda: optuna.visualization.plot_parallel_coordinate(
                ostudy, params=params, target_name=metric
            ),
        )
        section.caption = f"Final {metric} of the {_n_complete(ostudy)} complete trials."
        return section
    copy, _ = with_pruned(ostudy)
    section = _optuna_section(
        "parallel",
        title,
        lambda: optuna.visualization.plot_parallel_coordinate(
            copy, params=[STATE_DIM, EPOCH_DIM, *params], target_name=metric
        ),
    )
    if section.figure is not None:
        for tr in section.figure.data:  # one line per trial; pruned ones dotted
            cells = dict(tuple(c) for c in (tr.customdata or ()))
            if cells.get(STATE_DIM) == "pruned":
                tr.line.dash = "dot"
        section.caption = _mixed_caption(
            ostudy,
            len(complete),
            len(pruned),
            f"dotted lines; see the axes {STATE_DIM} and {EPOCH_DIM}",
        )
    return section


# -- assembling ----------------------------------------------------------------------------------


def _optuna_section(key: str, title: str, make: Callable[[], Any]) -> Section:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Section(key, title, make())
    except Exception as e:  # noqa: BLE001 - a figure Optuna cannot draw becomes a note
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Section(key, title, note=f"skipped: {msg}")


def history(ostudy: optuna.Study) -> Section:
    metric = _metric(ostudy)
    section = _optuna_section(
        "history",
        "Optimization history",
        lambda: optuna.visualization.plot_optimization_history(ostudy, target_name=metric),
    )
    if section.figure is not None:
        fit_value_axes(section.figure, metric)
        n = _n_complete(ostudy)
        section.caption = f"Final {metric} of the {n} complete trials, and the best so far."
    return section


def importances(ostudy: optuna.Study) -> Section:
    title, metric = "Hyperparameter importances", _metric(ostudy)
    complete = _complete(ostudy)
    if len(complete) < 2:
        note = f"skipped: importances need at least 2 complete trials ({len(complete)} so far)"
        return Section("importances", title, note=note)
    if not any(t.params for t in complete):
        return Section("importances", title, note="skipped: the study has no searched parameters")
    section = _optuna_section(
        "importances",
        title,
        lambda: optuna.visualization.plot_param_importances(ostudy, target_name=metric),
    )
    section.caption = f"From the {_n_complete(ostudy)} complete trials (fANOVA)."
    return section


def build_sections(ostudy: optuna.Study) -> list[Section]:
    metric = _metric(ostudy)
    return [
        history(ostudy),
        importances(ostudy),
        parallel_coordinates(ostudy),
        slices(ostudy),
        learning_curves(ostudy),
        heatmap(
            ostudy,
            "lr",
            "batch_size",
            f"Best {metric} by learning rate and batch size (R4's table)",
            bin_x=True,
        ),
        heatmap(
            ostudy,
            "batchnorm",
            "activation",
            f"Best {metric} by BatchNorm placement and activation (R3's figure 7)",
            x_order=["none", "before", "after"],
        ),
        cost_scatter(ostudy, "flops", "FLOPs per image"),
        cost_scatter(ostudy, "params_count", "parameters"),
    ]


FIGURE_KEYS = (
    "history",
    "importances",
    "parallel",
    "slices",
    "learning-curves",
    "lr-x-batch_size",
    "batchnorm-x-activation",
    "pareto-flops",
    "pareto-params_count",
)


# -- summary -------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a study cost and what pruning and deduplication saved, counted in epochs."""

    states: dict[str, int] = field(default_factory=dict)  # state name -> trials
    duplicates: int = 0  # trials that reused an earlier identical configuration's result
    epochs_trained: int = 0  # by all trials, failed ones included
    pruned_counted: int = 0  # pruned trials whose configured epochs are known
    pruned_unknown: int = 0  # pruned trials without a recorded epoch budget (not cnnopt's)
    epochs_saved_pruning: int = 0  # sum over pruned trials: configured epochs - epochs reached
    epochs_saved_dedup: int = 0  # sum over duplicates: the epochs their original trained
    wall_seconds: float | None = None  # first start to last finish (to now while trials run)
    running: int = 0


def summarize(ostudy: optuna.Study, now: dt.datetime | None = None) -> Summary:
    trials = ostudy.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    s = Summary()
    for t in trials:
        s.states[t.state.name] = s.states.get(t.state.name, 0) + 1
        s.epochs_trained += epochs_trained(t)
        orig = duplicate_of(t)
        if orig is not None:
            # a duplicate saved what its original's result cost: every epoch of its curve
            s.duplicates += 1
            if orig in by_number:
                s.epochs_saved_dedup += epochs_reached(by_number[orig])
            continue  # what its original's pruning saved is counted once, on the original
        configured = trial_value_of(t, "epochs")
        if t.state == TrialState.PRUNED and isinstance(configured, int):
            s.pruned_counted += 1
            s.epochs_saved_pruning += max(0, configured - epochs_reached(t))
        elif t.state == TrialState.PRUNED:
            s.pruned_unknown += 1
    s.running = s.states.get("RUNNING", 0)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and (ends or s.running):
        end = max(ends) if ends else min(starts)
        if s.running:
            end = max(end, now or dt.datetime.now())
        s.wall_seconds = max(0.0, (end - min(starts)).total_seconds())
    return s


def _duration(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def dashboard_command(study_name: str, url: str) -> str:
    """The command that opens this study's storage in optuna-dashboard. Passwords are never
    written: a masked URL needs its password back (or $CNNOPT_STORAGE set)."""
    if url == default_url(study_name):
        return f"cnnopt dashboard {shlex.quote(study_name)}"
    return f"cnnopt dashboard {shlex.quote(study_name)} --storage {shlex.quote(mask_url(url))}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def summary_rows(ostudy: optuna.Study, url: str) -> list[tuple[str, str]]:
    """(label, HTML) rows of the report's opening table."""
    st = study_status(ostudy, url)
    sm = summarize(ostudy)
    esc = html.escape
    rows: list[tuple[str, str]] = []
    if st.best_value is not None:
        rows.append(
            (
                "best trial",
                f"<b>#{st.best_number}: {esc(st.metric)} {st.best_value:.4f}</b><br>"
                f"{esc(_fmt_params(st.best_params)) or 'no searched parameters'}",
            )
        )
    else:
        rows.append(("best trial", "none yet (no complete trial)"))
    order = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    states = sorted(sm.states.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9)
    words = {"FAIL": "failed"}
    trials = f"{sum(sm.states.values())}: " + ", ".join(
        f"{n} {words.get(k, k.lower())}" for k, n in states
    )
    if sm.duplicates:
        trials += f" ({sm.duplicates} of them reused an identical earlier configuration's result)"
    rows.append(("trials", esc(trials if sm.states else "none")))
    full = sm.epochs_trained + sm.epochs_saved_pruning + sm.epochs_saved_dedup
    saved = sm.epochs_saved_pruning + sm.epochs_saved_dedup
    epochs = f"{sm.epochs_trained} trained"
    if saved:
        epochs += f"; {saved} saved ({100 * saved / full:.0f}% of the {full} without them)"
    rows.append(("epochs", esc(epochs)))
    pruning = (
        f"{_n(sm.epochs_saved_pruning, 'epoch')} ({_n(sm.pruned_counted, 'trial')} stopped early)"
    )
    if sm.pruned_unknown:
        pruning += f"; {_n(sm.pruned_unknown, 'pruned trial')} without a recorded epoch budget"
    rows.append(("saved by pruning", esc(pruning)))
    rows.append(
        (
            "saved by deduplication",
            esc(
                f"{_n(sm.epochs_saved_dedup, 'epoch')} ({_n(sm.duplicates, 'trial')} reused a result)"
            ),
        )
    )
    if sm.wall_seconds is not None:
        wall = _duration(sm.wall_seconds) + (
            f" so far ({_n(sm.running, 'trial')} running)" if sm.running else ""
        )
        rows.append(("wall time", esc(wall)))
    cmd = dashboard_command(ostudy.study_name, url)
    dash = f"<code>{esc(cmd)}</code>, then open http://127.0.0.1:8080/dashboard/studies/"
    dash += f"{ostudy._study_id}"
    if "***" in cmd:
        dash += " (put the password back in the URL, or set CNNOPT_STORAGE)"
    rows.append(("dashboard", dash))
    rows.append(("storage", esc(st.storage)))
    rows.append(("direction", esc(f"{st.direction} {st.metric}")))
    sf = ostudy.user_attrs.get("study_file") or {}
    if sf.get("path"):
        rows.append(("study file", esc(f"{sf['path']} (sha256 {str(sf.get('sha256'))[:12]})")))
    return rows


def trial_rows(ostudy: optuna.Study) -> list[list[str]]:
    """The trials table: number, state, value, epochs, params, note; best first when cut."""
    trials = ostudy.get_trials(deepcopy=False)
    if len(trials) > TABLE_ROWS:
        sign = -1 if ostudy.direction == optuna.study.StudyDirection.MAXIMIZE else 1
        ranked = sorted(trials, key=lambda t: (t.value is None, sign * (t.value or 0)))
        trials = sorted(ranked[:TABLE_ROWS], key=lambda t: t.number)
    rows = []
    for t in trials:
        configured = trial_value_of(t, "epochs")
        reached = epochs_reached(t)
        epochs = f"{reached}/{configured}" if isinstance(configured, int) else str(reached)
        orig = duplicate_of(t)
        if orig is not None:
            note = f"duplicate of #{orig}"
        elif t.state == TrialState.PRUNED:
            note = f"pruned at epoch {reached}"
        elif t.state == TrialState.FAIL:
            note = str(t.user_attrs.get("fail_reason", "failed"))
        else:
            note = ""
        if t.user_attrs.get("resumed_from_epoch"):
            note = (note + "; " if note else "") + (
                f"resumed from epoch {t.user_attrs['resumed_from_epoch']}"
            )
        # a pruned trial has no value: its last reported one stands in (the note says so)
        value = t.value if t.value is not None else None
        if value is None and t.state == TrialState.PRUNED:
            value = last_value(t)
        rows.append(
            [
                f"#{t.number}",
                t.state.name.lower(),
                "" if value is None else f"{value:.4f}",
                epochs,
                _fmt_params(t.params),
                note,
            ]
        )
    return rows


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table.summary td{padding:3px 14px 3px 0;vertical-align:top} table.summary td:first-child{color:#555}
.note{color:#666;font-style:italic} .caption{color:#444;margin:.3em 0}
table.trials{border-collapse:collapse;font-size:90%} table.trials td,table.trials th{
padding:2px 10px;border-bottom:1px solid #eee;text-align:left}
code{background:#f3f3f3;padding:1px 4px}
"""


def render(ostudy: optuna.Study, url: str, sections: list[Section]) -> str:
    from plotly.offline import get_plotlyjs

    body = [
        f"<h1>Study {html.escape(ostudy.study_name)}</h1>",
        '<table class="summary" id="summary">'
        + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in summary_rows(ostudy, url)
        )
        + "</table>",
    ]
    for s in sections:
        body.append(f'<section id="sec-{s.key}"><h2>{html.escape(s.title)}</h2>')
        if s.figure is not None:
            # the section heading names the figure: a second title inside it only takes room
            s.figure.update_layout(title_text="", margin={"t": 40})
            if s.caption:
                body.append(f'<p class="caption" id="caption-{s.key}">{html.escape(s.caption)}</p>')
            body.append(
                s.figure.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"fig-{s.key}",
                    default_width="100%",
                )
            )
        else:
            body.append(f'<p class="note" id="note-{s.key}">{html.escape(s.note)}</p>')
        body.append("</section>")
    rows = trial_rows(ostudy)
    n = len(ostudy.get_trials(deepcopy=False))
    shown = f"{len(rows)} best of {n}" if len(rows) < n else f"all {n}"
    head = "".join(f"<th>{h}</th>" for h in ("trial", "state", "value", "epochs", "params", "note"))
    body.append(
        f'<section id="sec-trials"><h2>Trials ({shown})</h2>'
        '<p class="caption">epochs: reached / configured; a pruned trial\'s value is its last '
        "reported one; a duplicate reused its original's result and trained nothing.</p>"
        f'<table class="trials" id="trials"><tr>{head}</tr>'
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</table></section>"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>cnnopt report: {html.escape(ostudy.study_name)}</title>"
        f"<style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        "</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    study_name: str, out: str | Path, storage: str | None = None
) -> tuple[Path, list[Section]]:
    ostudy, url = load_study(study_name, storage)
    if len(ostudy.directions) > 1:
        from cnnopt.errors import CnnoptError

        raise CnnoptError("cnnopt report covers single-objective studies only")
    sections = build_sections(ostudy)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(ostudy, url, sections), encoding="utf-8")
    return out, sections
