"""The HTML page: the summary table, the figures' sections, the trials table, plotly.js inline."""

from __future__ import annotations

import html
import shlex
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnopt.report.data import (
    duplicate_of,
    epochs_reached,
    last_value,
    summarize,
    trial_value_of,
)
from cnnopt.report.figures import Section, build_sections
from cnnopt.report.pareto import figures_for, metric_view
from cnnopt.report.pareto import summary_rows as pareto_summary_rows
from cnnopt.status import load_study, study_status
from cnnopt.storage import default_url, mask_url

# How many trials the trials table lists (the best ones first when there are more).
TABLE_ROWS = 500


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
                f"<b>#{st.best_number}: {esc(st.metric)} {st.best_value:.4f}</b>"
                + (f" ({esc(st.best_source)})" if st.best_source else "")
                + "<br>"
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
    rows.extend(pareto_summary_rows(ostudy))  # objectives of a Pareto study, budget
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


# The page is at most 1,100 px wide and every figure fills its width (layout.py wraps the wide
# ones into rows); a long unbroken value in a table cell wraps rather than widening the page.
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1100px;color:#222}
td{overflow-wrap:anywhere}
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
        # a Pareto study: every figure reads its metric; the front figure its costs too
        ostudy = metric_view(ostudy)
    sections = build_sections(ostudy, figures_for(ostudy))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(ostudy, url, sections), encoding="utf-8")
    return out, sections
