"""`cnnopt report`: one self-contained HTML file of plotly figures about a study.

Optuna's own plotly figures (optimization history, importances, parallel coordinates, slices,
intermediate values) are used as they are; the learning-curve figure is restyled so that pruned
trials are visibly cut (dotted, ending in a cross). What Optuna lacks is written here:
- a learning rate x batch size heat map of the best value per cell (report R4's table),
- a BatchNorm placement x activation heat map (report R3's figure 7),
- the value against FLOPs and against parameter count, with the Pareto front marked.

plotly.js is embedded once, inline, so the file works offline. A figure whose parameters a study
does not have is replaced by a one-line note, never an error.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnopt.config import KEY_SECTION
from cnnopt.status import load_study, study_status


@dataclass
class Section:
    key: str  # the figure's div id is fig-<key>
    title: str
    figure: Any = None  # plotly Figure, or None with a note
    note: str = ""


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


def _complete(ostudy: optuna.Study) -> list[FrozenTrial]:
    return [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]


def _finished(ostudy: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, and pruned ones that reported a value before they were cut."""
    pruned = [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if any(math.isfinite(v) for v in t.intermediate_values.values())
    ]
    return _complete(ostudy) + pruned


def _best_value(t: FrozenTrial, better: Callable[[float, float], bool]) -> float:
    """A complete trial's value; a pruned trial's best intermediate value."""
    if t.state == TrialState.COMPLETE:
        return float(t.value)
    best = None
    for v in t.intermediate_values.values():
        if math.isfinite(v) and (best is None or better(v, best)):
            best = v
    return float(best)


def _better(ostudy: optuna.Study) -> Callable[[float, float], bool]:
    if ostudy.direction == optuna.study.StudyDirection.MINIMIZE:
        return lambda a, b: a < b
    return lambda a, b: a > b


def _metric(ostudy: optuna.Study) -> str:
    return str(ostudy.user_attrs.get("metric", "objective value"))


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


def heatmap(
    ostudy: optuna.Study,
    x_key: str,
    y_key: str,
    title: str,
    x_order: list | None = None,
    y_order: list | None = None,
    bin_x: bool = False,
) -> Section:
    """Best value per (x, y) cell, with the trial count in each cell. Complete trials count with
    their value, pruned ones with the best value they reached before they were cut."""
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
        pts = [(label(float(x)), y, t) for x, y, t in pts]
    else:
        x_labels = [v for v in (x_order or []) if v in xs] + sorted(
            (v for v in xs if v not in (x_order or [])), key=str
        )
        x_labels = [str(v) for v in x_labels]
        pts = [(str(x), y, t) for x, y, t in pts]
    y_labels = [v for v in (y_order or []) if v in ys] + sorted(
        (v for v in ys if v not in (y_order or [])), key=str
    )
    y_labels = [str(v) for v in y_labels]
    better = _better(ostudy)
    best: dict[tuple[str, str], tuple[float, int, int]] = {}  # value, count, trial number
    for x, y, t in pts:
        cell = (x, str(y))
        v, n, num = best.get(cell, (None, 0, -1))
        tv = _best_value(t, better)
        if v is None or better(tv, v):
            v, num = tv, t.number
        best[cell] = (v, n + 1, num)
    z = [[best.get((x, y), (None,))[0] for x in x_labels] for y in y_labels]
    text = [
        [
            f"{best[(x, y)][0]:.4f}<br>n={best[(x, y)][1]}" if (x, y) in best else ""
            for x in x_labels
        ]
        for y in y_labels
    ]
    custom = [[best.get((x, y), (0, 0, -1))[2] for x in x_labels] for y in y_labels]
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
            colorbar={"title": f"best {_metric(ostudy)}"},
            hovertemplate=f"{x_key} %{{x}}<br>{y_key} %{{y}}<br>best %{{z:.4f}} "
            "(trial #%{customdata})<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis={"title": x_key, "type": "category"},
        yaxis={"title": y_key, "type": "category"},
    )
    return Section(key, title, fig)


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
    return Section(key, title, fig)


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
    return Section("learning-curves", title, fig)


# -- assembling ----------------------------------------------------------------------------------


def _optuna_section(key: str, title: str, make: Callable[[], Any]) -> Section:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Section(key, title, make())
    except Exception as e:  # noqa: BLE001 - a figure Optuna cannot draw becomes a note
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Section(key, title, note=f"skipped: {msg}")


def build_sections(ostudy: optuna.Study) -> list[Section]:
    vis = optuna.visualization
    metric = _metric(ostudy)
    complete = _complete(ostudy)
    params = sorted({p for t in complete for p in t.params})
    sections = [
        _optuna_section(
            "history",
            "Optimization history",
            lambda: vis.plot_optimization_history(ostudy, target_name=metric),
        )
    ]
    if len(complete) < 2:
        sections.append(
            Section(
                "importances",
                "Hyperparameter importances",
                note=f"skipped: importances need at least 2 complete trials ({len(complete)} so far)",
            )
        )
    elif not params:
        sections.append(
            Section(
                "importances",
                "Hyperparameter importances",
                note="skipped: the study has no searched parameters",
            )
        )
    else:
        sections.append(
            _optuna_section(
                "importances",
                "Hyperparameter importances",
                lambda: vis.plot_param_importances(ostudy, target_name=metric),
            )
        )
    for key, title, fn in (
        ("parallel", "Parallel coordinates", vis.plot_parallel_coordinate),
        ("slices", "Slices", vis.plot_slice),
    ):
        if not params:
            sections.append(
                Section(key, title, note="skipped: no complete trial with searched parameters")
            )
        else:
            sections.append(
                _optuna_section(key, title, lambda fn=fn: fn(ostudy, target_name=metric))
            )
    sections.append(learning_curves(ostudy))
    sections.append(
        heatmap(
            ostudy,
            "lr",
            "batch_size",
            f"Best {metric} by learning rate and batch size (R4's table)",
            bin_x=True,
        )
    )
    sections.append(
        heatmap(
            ostudy,
            "batchnorm",
            "activation",
            f"Best {metric} by BatchNorm placement and activation (R3's figure 7)",
            x_order=["none", "before", "after"],
        )
    )
    sections.append(cost_scatter(ostudy, "flops", "FLOPs per image"))
    sections.append(cost_scatter(ostudy, "params_count", "parameters"))
    return sections


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

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table.summary td{padding:2px 12px 2px 0;vertical-align:top} .note{color:#666;font-style:italic}
"""


def render(ostudy: optuna.Study, url: str, sections: list[Section]) -> str:
    from plotly.offline import get_plotlyjs

    st = study_status(ostudy, url)
    rows = [
        ("storage", st.storage),
        ("direction", f"{st.direction} {st.metric}"),
        ("trials", ", ".join(f"{n} {k.lower()}" for k, n in sorted(st.states.items())) or "none"),
    ]
    if st.best_value is not None:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in st.best_params.items()
        )
        rows.append(("best", f"trial #{st.best_number}: {st.best_value:.4f} ({params})"))
    if st.pruned_fraction is not None:
        rows.append(("pruned", f"{100 * st.pruned_fraction:.0f}% of finished trials"))
    sf = ostudy.user_attrs.get("study_file") or {}
    if sf.get("path"):
        rows.append(("study file", f"{sf['path']} (sha256 {str(sf.get('sha256'))[:12]})"))
    body = [
        f"<h1>Study {html.escape(ostudy.study_name)}</h1>",
        '<table class="summary">'
        + "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        + "</table>",
    ]
    for s in sections:
        body.append(f'<section id="sec-{s.key}"><h2>{html.escape(s.title)}</h2>')
        if s.figure is not None:
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
