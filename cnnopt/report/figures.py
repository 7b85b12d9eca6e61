"""The report's figures: each builder takes the study and returns a Section (a plotly figure, or a
one-line note when the study lacks what the figure needs)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnopt.report.data import (
    EPOCH_DIM,
    STATE_DIM,
    better,
    comparable_values,
    complete_trials,
    epochs_reached,
    finished_trials,
    metric_name,
    n_complete,
    pruned_trials,
    trial_value_of,
    with_pruned,
)
from cnnopt.report.layout import (
    bins,
    fit_value_axes,
    order_key,
    sort_numeric_categories,
    wrap_parallel,
    wrap_subplots,
)

# Below this many complete trials, slices and parallel coordinates add the pruned trials (at their
# last reported value): three points say little, and pruned trials are most of a pruned study.
FEW_COMPLETE = 10


@dataclass
class Section:
    key: str  # the figure's div id is fig-<key>
    title: str
    figure: Any = None  # plotly Figure, or None with a note
    note: str = ""
    caption: str = ""  # what the figure shows, when that is not obvious (which trials, which epoch)


# -- figures Optuna lacks ------------------------------------------------------------------------


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
) -> Section:
    """Best value per (x, y) cell, with the trial count in each cell.

    One colour scale must compare like with like. When the complete trials fill every cell that
    the pruned ones do, cells hold the complete trials' final values; otherwise every finished
    trial's value at the last epoch all of them reached (comparable_values). The caption says
    which.

    A discrete parameter has one row or column per value; a continuous one is binned (decades
    of a log-uniform one, else quartiles: layout.bins), and the caption says so."""
    import plotly.graph_objects as go

    key = f"{x_key}-x-{y_key}"
    trials = finished_trials(ostudy)
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
    binned = []
    axes = []
    for i, (k, order) in enumerate(((x_key, x_order), (y_key, y_order))):
        dist = next((t.distributions[k] for _, _, t in pts if k in t.distributions), None)
        b = bins([p[i] for p in pts], dist)
        if b is None:
            axes.append((str, _ordered({p[i] for p in pts}, order)))
        else:
            axes.append(b[:2])
            binned.append(f"{k} is binned into {b[2]}")
    (x_label, x_labels), (y_label, y_labels) = axes
    pts = [(x_label(x), y_label(y), t) for x, y, t in pts]
    complete = [p for p in pts if p[2].state == TrialState.COMPLETE]
    n_pruned = len(pts) - len(complete)
    if complete and {(x, y) for x, y, _ in complete} == {(x, y) for x, y, _ in pts}:
        pts = complete  # the pruned trials fill no cell of their own
    values, epoch = comparable_values([t for _, _, t in pts])
    pts = [p for p in pts if p[2].number in values]
    shown_pruned = sum(t.state == TrialState.PRUNED for _, _, t in pts)
    metric = metric_name(ostudy)
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
    if binned:
        caption = caption.removesuffix(".") + "; " + "; ".join(binned) + "."

    is_better = better(ostudy)
    best: dict[tuple[str, str], tuple[float, int, int]] = {}  # value, count, trial number
    for x, y, t in pts:
        v, n, num = best.get((x, y), (None, 0, -1))
        tv = values[t.number]
        if v is None or is_better(tv, v):
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
    title = f"{metric_name(ostudy)} against {label}, Pareto front"
    pts = [
        (float(t.user_attrs[attr]), float(t.value), t.number)
        for t in complete_trials(ostudy)
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
        yaxis={"title": metric_name(ostudy)},
    )
    fit_value_axes(fig, metric_name(ostudy))
    caption = (
        f"Final {metric_name(ostudy)} of the {len(pts)} complete trials (pruned ones have none)."
    )
    return Section(key, title, fig, caption=caption)


def learning_curves(ostudy: optuna.Study) -> Section:
    """Optuna's intermediate values plot, each curve named after its trial (on hover and in the
    legend, where a click hides a trial and a double click shows it alone), pruned trials dotted
    and ended with a cross."""
    import plotly.graph_objects as go

    title = "Learning curves (intermediate values; pruned trials dotted, cut at the cross)"
    metric = metric_name(ostudy)
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
        state = t.state.name.lower() if t is not None else "?"
        tr.name = f"trial #{number}" + (" (pruned)" if state == "pruned" else "")
        tr.hovertemplate = (
            f"trial #{number} ({state})<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>"
        )
        if state == "pruned":
            tr.line = {"dash": "dot"}
            tr.opacity = 0.6
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
    fig.update_layout(
        title=title,
        xaxis_title="epoch",
        yaxis_title=metric,
        showlegend=True,
        legend={"title": {"text": "click: hide<br>double click: only this"}},
        hovermode="closest",
    )
    fit_value_axes(fig, metric)
    return Section("learning-curves", title, fig)


def _searched(complete: list[FrozenTrial], pruned: list[FrozenTrial]) -> list[str]:
    """The parameters the slices and parallel coordinates show: those of the trials they draw."""
    shown = complete if len(complete) >= FEW_COMPLETE or not pruned else complete + pruned
    return sorted({p for t in shown for p in t.params})


def _mixed_caption(ostudy: optuna.Study, n_complete: int, n_pruned: int, how: str) -> str:
    return (
        f"{n_complete} complete trials and {n_pruned} pruned ones at their last reported "
        f"{metric_name(ostudy)} ({how}): with fewer than {FEW_COMPLETE} complete trials the pruned "
        "ones are shown too. A pruned trial's value is from an earlier epoch than a complete one's."
    )


def slices(ostudy: optuna.Study) -> Section:
    title, metric = "Slices", metric_name(ostudy)
    complete, pruned = complete_trials(ostudy), pruned_trials(ostudy)
    params = _searched(complete, pruned)
    if not params:
        return Section("slices", title, note="skipped: no finished trial with searched parameters")
    if len(complete) >= FEW_COMPLETE or not pruned:
        section = _optuna_section(
            "slices",
            title,
            lambda: optuna.visualization.plot_slice(ostudy, params=params, target_name=metric),
        )
        section.caption = f"Final {metric} of the {n_complete(ostudy)} complete trials."
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
        wrap_subplots(section.figure)
        sort_numeric_categories(section.figure)
        fit_value_axes(section.figure, metric)
    return section


def parallel_coordinates(ostudy: optuna.Study) -> Section:
    title, metric = "Parallel coordinates", metric_name(ostudy)
    complete, pruned = complete_trials(ostudy), pruned_trials(ostudy)
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
        section.caption = f"Final {metric} of the {n_complete(ostudy)} complete trials."
        if section.figure is not None:
            section.figure = wrap_parallel(section.figure)
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
        section.figure = wrap_parallel(section.figure)
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
    metric = metric_name(ostudy)
    section = _optuna_section(
        "history",
        "Optimization history",
        lambda: optuna.visualization.plot_optimization_history(ostudy, target_name=metric),
    )
    if section.figure is not None:
        fit_value_axes(section.figure, metric)
        n = n_complete(ostudy)
        section.caption = f"Final {metric} of the {n} complete trials, and the best so far."
    return section


def importances(ostudy: optuna.Study) -> Section:
    title, metric = "Hyperparameter importances", metric_name(ostudy)
    complete = complete_trials(ostudy)
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
    section.caption = f"From the {n_complete(ostudy)} complete trials (fANOVA)."
    return section


def lr_batch_heatmap(ostudy: optuna.Study) -> Section:
    return heatmap(
        ostudy,
        "lr",
        "batch_size",
        f"Best {metric_name(ostudy)} by learning rate and batch size (R4's table)",
    )


def batchnorm_activation_heatmap(ostudy: optuna.Study) -> Section:
    return heatmap(
        ostudy,
        "batchnorm",
        "activation",
        f"Best {metric_name(ostudy)} by BatchNorm placement and activation (R3's figure 7)",
        x_order=["none", "before", "after"],
    )


@dataclass(frozen=True)
class Figure:
    """One section of the report: its key (the figure's div id is fig-<key>) and its builder."""

    key: str
    build: Callable[[optuna.Study], Section]


# The report's figures, in page order. A new figure is a builder (study -> Section, a note instead
# of a figure when the study lacks what it needs) and one line here.
FIGURES: list[Figure] = [
    Figure("history", history),
    Figure("importances", importances),
    Figure("parallel", parallel_coordinates),
    Figure("slices", slices),
    Figure("learning-curves", learning_curves),
    Figure("lr-x-batch_size", lr_batch_heatmap),
    Figure("batchnorm-x-activation", batchnorm_activation_heatmap),
    Figure("pareto-flops", lambda s: cost_scatter(s, "flops", "FLOPs per image")),
    Figure("pareto-params_count", lambda s: cost_scatter(s, "params_count", "parameters")),
]
FIGURE_KEYS = tuple(f.key for f in FIGURES)


def build_sections(ostudy: optuna.Study, figures: list[Figure] | None = None) -> list[Section]:
    """Every figure's section, in order; a builder's key and its section's key agree."""
    sections = []
    for f in FIGURES if figures is None else figures:
        section = f.build(ostudy)
        section.key = f.key
        sections.append(section)
    return sections
