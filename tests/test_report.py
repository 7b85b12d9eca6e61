from __future__ import annotations

import optuna
from click.testing import CliRunner
from optuna.trial import TrialState

from cnnopt import report
from cnnopt.cli import cli
from cnnopt.report import (
    FIGURE_KEYS,
    build_sections,
    comparable_values,
    dashboard_command,
    pareto_front,
    render,
    summarize,
    write_report,
)
from cnnopt.status import load_study
from cnnopt.storage import default_url, get_storage


def test_report_has_every_figure_and_plotly_inline_once(tiny_study, tmp_path):
    _, url = tiny_study
    out, sections = write_report("tiny", tmp_path / "r.html", url)
    text = out.read_text()
    assert [s.key for s in sections] == list(FIGURE_KEYS)
    for s in sections:
        assert s.figure is not None, f"{s.key}: {s.note}"
        assert f'id="fig-{s.key}"' in text
    assert text.count("plotly.js v") == 1  # the library, inline, exactly once (works offline)
    assert '<script src="http' not in text  # no CDN: works offline


def with_a_pruned_trial(ostudy: optuna.Study) -> optuna.Study:
    """The tiny study's trials plus one pruned at epoch 1 for sure (whether the random sampler
    made the median pruner prune any is up to chance): a complete trial's run, cut there."""
    study = optuna.create_study(direction=ostudy.direction)
    for key, value in ostudy.user_attrs.items():
        study.set_user_attr(key, value)
    for t in ostudy.trials:
        study.add_trial(t)
    donor = next(t for t in ostudy.trials if t.state.name == "COMPLETE")
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            params=donor.params,
            distributions=donor.distributions,
            intermediate_values={1: donor.intermediate_values[1]},
            user_attrs={**donor.user_attrs, "history": donor.user_attrs["history"][:1]},
        )
    )
    return study


def test_learning_curves_mark_pruned_trials(tiny_study):
    _, url = tiny_study
    ostudy = with_a_pruned_trial(load_study("tiny", url)[0])
    pruned = [t.number for t in ostudy.trials if t.state.name == "PRUNED"]
    assert pruned
    fig = {s.key: s for s in build_sections(ostudy)}["learning-curves"].figure
    names = [tr.name for tr in fig.data]
    for n in pruned:
        tr = next(tr for tr in fig.data if tr.name == f"Trial{n} (pruned)")
        assert tr.line.dash == "dot"
    cut = next(tr for tr in fig.data if tr.name == "pruned here")
    assert sorted(cut.customdata) == sorted(pruned)
    assert len(names) >= len(ostudy.trials)


def test_heatmaps_and_pareto_figures_hold_the_best_values(tiny_study):
    _, url = tiny_study
    ostudy, _ = load_study("tiny", url)
    s = {s.key: s for s in build_sections(ostudy)}
    hm = s["batchnorm-x-activation"].figure.data[0]
    complete = [t for t in ostudy.trials if t.state.name == "COMPLETE"]
    z = [v for row in hm.z for v in row if v is not None]
    shown = [t for t in ostudy.trials if t.number in set(c for row in hm.customdata for c in row)]
    values, epoch = comparable_values(
        [t for t in ostudy.trials if t.state.name in ("COMPLETE", "PRUNED")]
    )
    if epoch is None:  # complete trials only, final values
        assert max(z) == max(t.value for t in complete)
    else:
        assert f"at epoch {epoch}" in s["batchnorm-x-activation"].caption
        assert max(z) == max(values[t.number] for t in shown)
    assert list(hm.x) == [b for b in ("none", "before", "after") if b in hm.x]
    front = s["pareto-flops"].figure.data[1]
    assert front.name == "Pareto front"
    assert max(front.y) == max(t.value for t in complete)


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 0.5, 0), (20, 0.7, 1), (15, 0.4, 2), (30, 0.7, 3), (5, 0.2, 4)]
    assert [pts[i][2] for i in pareto_front(pts, maximize=True)] == [4, 0, 1]
    assert [pts[i][2] for i in pareto_front(pts, maximize=False)] == [4]


def test_figures_of_absent_params_and_too_few_trials_become_notes(tmp_path):
    url = str(tmp_path / "n.journal")
    ostudy = optuna.create_study(study_name="plain", storage=get_storage(url), direction="maximize")
    ostudy.optimize(lambda t: t.suggest_float("dropout", 0, 0.5), n_trials=1)
    r = CliRunner().invoke(
        cli, ["report", "plain", "--storage", url, "--out", str(tmp_path / "p.html")]
    )
    assert r.exit_code == 0, r.output
    text = (tmp_path / "p.html").read_text()
    s = {
        s.key: s
        for s in build_sections(optuna.load_study(study_name="plain", storage=get_storage(url)))
    }
    assert s["history"].figure is not None and 'id="fig-history"' in text
    assert "at least 2 complete trials" in s["importances"].note
    assert "lr and batch_size not recorded" in s["lr-x-batch_size"].note
    assert "not recorded" in s["batchnorm-x-activation"].note
    assert "flops" in s["pareto-flops"].note
    assert "no trial reported intermediate values" in s["learning-curves"].note
    for key in ("importances", "lr-x-batch_size", "pareto-flops"):
        assert f'id="note-{key}"' in text


def test_report_of_an_empty_study_does_not_fail(tmp_path):
    url = str(tmp_path / "e.journal")
    optuna.create_study(study_name="empty", storage=get_storage(url))
    out, sections = write_report("empty", tmp_path / "e.html", url)
    assert out.is_file() and len(sections) == len(FIGURE_KEYS)


# -- studies built with ask/tell: exact figures, no training ----------------------------------------


def _trial(st, lr, bs, curve, state="complete", value=None, **attrs):
    """One trial told to ``st``: params, per-epoch values, final state, user attributes."""
    st.enqueue_trial({"lr": lr, "batch_size": bs})
    t = st.ask()
    t.suggest_float("lr", 1e-3, 1e-1, log=True)
    t.suggest_categorical("batch_size", [64, 32, 128])
    for epoch, v in enumerate(curve, 1):
        t.report(v, epoch)
    for k, v in {"config": {"train": {"epochs": 10}}, **attrs}.items():
        t.set_user_attr(k, v)
    if state == "complete":
        st.tell(t, curve[-1] if value is None else value)
    else:
        st.tell(t, state={"pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[state])
    return t.number


def _study(tmp_path, name="s"):
    url = str(tmp_path / f"{name}.journal")
    st = optuna.create_study(study_name=name, storage=get_storage(url), direction="maximize")
    st.set_user_attr("metric", "val_accuracy")
    return st, url


def _cell(fig, x, y):
    hm = fig.data[0]
    return hm.z[list(hm.y).index(y)][list(hm.x).index(x)]


def test_numeric_categories_are_ordered_by_value_on_every_axis(tmp_path):
    st, _ = _study(tmp_path)
    for i, bs in enumerate((64, 32, 128, 64)):  # order of appearance 64, 32, 128
        _trial(st, 0.01 * (i + 1), bs, [0.5 + 0.1 * i, 0.6 + 0.1 * i])
    s = {s.key: s for s in build_sections(st)}
    assert list(s["lr-x-batch_size"].figure.data[0].y) == ["32", "64", "128"]
    assert list(s["lr-x-batch_size"].figure.layout.yaxis.categoryarray) == ["32", "64", "128"]
    lrs = [float(v) for v in s["lr-x-batch_size"].figure.data[0].x]
    assert lrs == sorted(lrs)
    axes = []
    s["slices"].figure.for_each_xaxis(lambda ax: axes.append(ax.categoryarray))
    assert ("32", "64", "128") in [tuple(a) for a in axes if a]


def test_heatmap_compares_the_common_epoch_not_pruned_against_complete(tmp_path):
    st, _ = _study(tmp_path)
    _trial(st, 0.01, 64, [0.5, 0.6, 0.7, 0.8])  # complete, final 0.8
    _trial(st, 0.01, 32, [0.55, 0.65], "pruned")  # cut at epoch 2, alone in its cell
    _trial(st, 0.001, 128, [0.3, 0.4, 0.9, 0.95])  # complete, final 0.95
    hm = {s.key: s for s in build_sections(st)}["lr-x-batch_size"]
    # the pruned trial fills a cell of its own: every cell at epoch 2, the last all three reached
    assert _cell(hm.figure, "0.01", "64") == 0.6
    assert _cell(hm.figure, "0.01", "32") == 0.65
    assert _cell(hm.figure, "0.001", "128") == 0.4
    assert "at epoch 2" in hm.caption and "2 complete, 1 pruned" in hm.caption
    assert "epoch 2" in hm.figure.data[0].colorbar.title.text

    _trial(st, 0.01, 32, [0.5, 0.6, 0.7, 0.85])  # now complete trials fill every cell
    hm = {s.key: s for s in build_sections(st)}["lr-x-batch_size"]
    assert _cell(hm.figure, "0.01", "64") == 0.8
    assert _cell(hm.figure, "0.01", "32") == 0.85  # the pruned trial's 0.65 is not mixed in
    assert _cell(hm.figure, "0.001", "128") == 0.95
    assert hm.caption.startswith("Final val_accuracy of the 3 complete trials")
    assert "1 pruned trials are left out" in hm.caption


def test_accuracy_axes_span_the_data_inside_0_1(tmp_path):
    st, _ = _study(tmp_path)
    _trial(st, 0.01, 64, [0.80, 0.90])  # one complete trial: plotly alone would span 0..1.8
    _trial(st, 0.02, 32, [0.85], "pruned")
    s = {s.key: s for s in build_sections(st)}
    for key in ("history", "learning-curves", "slices"):
        lo, hi = s[key].figure.layout.yaxis.range
        data = [v for tr in s[key].figure.data if tr.y for v in tr.y if v is not None]
        assert lo < min(data) and max(data) < hi, (key, lo, hi)
        assert 0.7 < lo and hi <= 0.95, (key, lo, hi)
    _trial(st, 0.03, 128, [0.5, 0.999])
    lo, hi = {s.key: s for s in build_sections(st)}["learning-curves"].figure.layout.yaxis.range
    assert 0.45 < lo < 0.5 and hi == 1.0  # the margin never leaves [0, 1]


def test_slices_and_parallel_coordinates_add_marked_pruned_trials_when_few_complete(
    tmp_path, monkeypatch
):
    st, _ = _study(tmp_path)
    _trial(st, 0.01, 64, [0.5, 0.6, 0.7])
    pruned = _trial(st, 0.02, 32, [0.4], "pruned")
    _trial(st, 0.03, 128, [0.6, 0.7, 0.8])
    s = {s.key: s for s in build_sections(st)}
    slice_traces = [tr for tr in s["slices"].figure.data if tr.name == "Feasible Trial"]
    for tr in slice_traces:  # one trace per parameter, every trial in each
        assert sorted(tr.marker.color) == [0, 1, 2]
        marks = dict(zip(tr.marker.color, tr.marker.symbol, strict=True))
        assert marks == {0: "circle", pruned: "x", 2: "circle"}
    assert "1 pruned" in s["slices"].caption
    lines = [tr for tr in s["parallel"].figure.data if tr.mode == "lines" and tr.customdata]
    assert len(lines) == 3
    assert sum(tr.line.dash == "dot" for tr in lines) == 1
    assert "1 pruned" in s["parallel"].caption

    monkeypatch.setattr(
        report.figures, "FEW_COMPLETE", 2
    )  # enough complete trials: pruned left out
    s = {s.key: s for s in build_sections(st)}
    tr = next(tr for tr in s["slices"].figure.data if tr.name == "Feasible Trial")
    assert len(tr.y) == 2 and s["slices"].caption.startswith("Final")


def test_summary_counts_states_duplicates_and_epochs_saved(tmp_path):
    st, url = _study(tmp_path)
    full = [0.1 * e for e in range(1, 11)]  # 10 epochs, as configured
    a = _trial(st, 0.01, 64, full)  # trained 10
    b = _trial(st, 0.02, 32, [0.1, 0.2, 0.3], "pruned")  # trained 3, pruning saved 7
    _trial(st, 0.03, 32, [0.1], "pruned")  # trained 1, pruning saved 9
    _trial(st, 0.01, 64, [], value=1.0, duplicate_of=a)  # reused a: saved 10
    _trial(st, 0.02, 32, [], "pruned", duplicate_of=b)  # reused b: saved 3
    _trial(st, 0.04, 128, [0.1, 0.2], "fail")  # trained 2 before it failed
    _trial(st, 0.05, 128, full, resumed_from_epoch=4)  # its first 4 epochs are its original's

    sm = summarize(st)
    assert sm.states == {"COMPLETE": 3, "PRUNED": 3, "FAIL": 1}
    assert sm.duplicates == 2
    assert sm.epochs_trained == 10 + 3 + 1 + 2 + 6
    assert (sm.epochs_saved_pruning, sm.pruned_counted) == (7 + 9, 2)
    assert sm.epochs_saved_dedup == 10 + 3
    assert sm.wall_seconds is not None and 0 <= sm.wall_seconds < 60

    text = render(st, url, [])
    assert "7: 3 complete, 3 pruned, 1 failed (2 of them reused an identical" in text
    assert "22 trained; 29 saved (57% of the 51 without them)" in text
    assert "16 epochs (2 trials stopped early)" in text
    assert "13 epochs (2 trials reused a result)" in text
    assert f"<td>duplicate of #{a}</td>" in text and f"<td>duplicate of #{b}</td>" in text
    assert "<td>pruned at epoch 3</td>" in text and "resumed from epoch 4" in text
    assert "cnnopt dashboard s --storage" in text
    assert "wall time" in text and "#3: val_accuracy 1.0000" not in text  # best is #0 or #6
    assert "#0: val_accuracy 1.0000" in text


def test_dashboard_command_never_shows_a_password():
    cmd = dashboard_command("fm", "postgresql+psycopg2://cnnopt:s3cret@db:5432/cnnopt")
    assert "s3cret" not in cmd and "cnnopt:***@db" in cmd
    assert dashboard_command("fm", default_url("fm")) == "cnnopt dashboard fm"
