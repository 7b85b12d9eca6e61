"""The report of budget and Pareto studies: the front figure, the summary rows, and the
single-metric view through which every other figure reads a Pareto study.

A Pareto study (``objectives = ["val_accuracy", "flops"]``) is a multi-objective Optuna study whose
trials keep their per-epoch metric in the ``intermediate`` user attribute (Optuna's report refuses
multi-objective studies). ``metric_view`` copies it into an in-memory single-objective study of its
metric, with those values as intermediate values, so the history, slices, learning curves and heat
maps draw it as they draw any study; the front figure reads the costs from the trials' user
attributes, which the copy keeps.
"""

from __future__ import annotations

import html
import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnopt.report.data import duplicate_of, epochs_reached, metric_name
from cnnopt.report.figures import FIGURES, Figure, Section
from cnnopt.report.layout import fit_value_axes

COST_LABEL = {"flops": "FLOPs per image", "params": "parameters", "latency_ms": "latency (ms)"}


def objectives(ostudy: optuna.Study) -> list[str]:
    """The study file's objectives (empty: a single-objective study)."""
    settings = (ostudy.user_attrs.get("study_file") or {}).get("settings") or {}
    return list(settings.get("objectives") or [])


def metric_view(ostudy: optuna.Study) -> optuna.Study:
    """An in-memory single-objective copy of a Pareto study: each trial's value is its metric (the
    first objective), its intermediate values the per-epoch metric it stored; params, user and
    system attributes, states and times as they are."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        copy = optuna.create_study(study_name=ostudy.study_name, direction=ostudy.directions[0])
    finally:
        optuna.logging.set_verbosity(level)
    for key, value in ostudy.user_attrs.items():
        copy.set_user_attr(key, value)
    for t in ostudy.get_trials(deepcopy=False):
        curve = t.user_attrs.get("intermediate") or {}
        copy.add_trial(
            FrozenTrial(
                number=t.number,
                state=t.state,
                value=t.values[0] if t.state == TrialState.COMPLETE and t.values else None,
                values=None,
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                system_attrs=t.system_attrs,
                intermediate_values={int(k): float(v) for k, v in curve.items()},
                trial_id=t._trial_id,
            )
        )
    return copy


def summary_rows(ostudy: optuna.Study) -> list[tuple[str, str]]:
    """Rows for the report's summary table: the objectives, and the over-budget proposals."""
    rows = []
    names = objectives(ostudy)
    if names:
        direction = ostudy.directions[0].name.lower()
        rows.append(
            (
                "objectives",
                html.escape(
                    f"{direction} {names[0]}, " + ", ".join(f"minimize {n}" for n in names[1:])
                )
                + " (a Pareto study: see its front below)",
            )
        )
    trials = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    over = [t for t in trials if t.user_attrs.get("over_budget")]
    settings = (ostudy.user_attrs.get("study_file") or {}).get("settings") or {}
    limits = [
        f"{k} {settings[k]:,}"
        for k in ("max_params", "max_flops", "max_latency_ms")
        if settings.get(k)
    ]
    if limits:
        rows.append(
            (
                "budget",
                html.escape(
                    f"{', '.join(limits)}: {len(over)} of {len(trials)} proposals were over it, "
                    "recorded before their first epoch and never trained"
                ),
            )
        )
    return rows


def figures_for(ostudy: optuna.Study) -> list[Figure]:
    """The report's figures for this study: a Pareto study's front first, then FIGURES."""
    if len(objectives(ostudy)) < 2:
        return list(FIGURES)
    return [Figure("pareto", pareto_figure), *FIGURES]


def pareto_figure(ostudy: optuna.Study) -> Section:
    """The metric against the study's first cost objective: complete trials, the front through
    them, and pruned trials at the metric of the epoch they stopped (marked by that epoch)."""
    import plotly.graph_objects as go

    names = objectives(ostudy)
    key = "pareto"
    if len(names) < 2:
        return Section(key, "Pareto front", note="skipped: not a Pareto study (no objectives)")
    cost = names[1]
    from cnnopt.cost import COST_ATTR
    from cnnopt.pareto import front_mask

    attr, label, metric = COST_ATTR[cost], COST_LABEL[cost], metric_name(ostudy)
    title = f"Pareto front: {metric} against {label}"
    maximize = ostudy.directions[0] == optuna.study.StudyDirection.MAXIMIZE

    def point(t: FrozenTrial) -> tuple[float, float] | None:
        c = t.user_attrs.get(attr)
        v = t.value if t.state == TrialState.COMPLETE else _last(t)
        if not isinstance(c, int | float) or v is None or not math.isfinite(v):
            return None
        return float(c), float(v)

    trials = [t for t in ostudy.get_trials(deepcopy=False) if duplicate_of(t) is None]
    complete = [(t, p) for t in trials if t.state == TrialState.COMPLETE and (p := point(t))]
    pruned = [(t, p) for t in trials if t.state == TrialState.PRUNED and (p := point(t))]
    if not complete:
        return Section(key, title, note="skipped: no complete trial yet")
    on = front_mask([(p[1], (p[0],)) for _, p in complete], maximize)
    front = sorted((p for (_, p), f in zip(complete, on, strict=True) if f), key=lambda p: p[0])
    fig = go.Figure()
    hover = f"trial #%{{customdata[0]}}<br>{label} %{{x:.3s}}<br>{metric} %{{y:.4f}}%{{customdata[1]}}<extra></extra>"
    fig.add_trace(
        go.Scatter(
            x=[p[0] for _, p in pruned],
            y=[p[1] for _, p in pruned],
            mode="markers",
            name="pruned (at its last epoch)",
            marker={"color": "#bbbbbb", "symbol": "x", "size": 8},
            customdata=[[t.number, f"<br>pruned at epoch {epochs_reached(t)}"] for t, _ in pruned],
            hovertemplate=hover,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[p[0] for _, p in complete],
            y=[p[1] for _, p in complete],
            mode="markers",
            name="complete",
            marker={"color": "#4c78a8", "size": 9},
            customdata=[[t.number, ""] for t, _ in complete],
            hovertemplate=hover,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in front],
            y=[p[1] for p in front],
            mode="lines+markers",
            line={"shape": "hv", "color": "#d62728"},
            marker={"size": 12, "symbol": "diamond"},
            name="Pareto front",
            hoverinfo="skip",
        )
    )
    fig.update_layout(xaxis={"title": f"{label} (log)", "type": "log"}, yaxis={"title": metric})
    fit_value_axes(fig, metric)
    caption = (
        f"{len(complete)} complete trials (front: {len(front)}) and {len(pruned)} pruned ones at "
        f"the {metric} of the epoch they were stopped, which a full training would raise; "
        f"export any point with `cnnopt export {ostudy.study_name} --trial N`."
    )
    if len(names) > 2:
        caption += (
            f" The front is drawn in {metric} and {cost} only; the study's also has {names[2]}."
        )
    return Section(key, title, fig, caption=caption)


def _last(t: FrozenTrial) -> float | None:
    steps = [s for s, v in t.intermediate_values.items() if math.isfinite(v)]
    return float(t.intermediate_values[max(steps)]) if steps else None
