from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from cnnopt import report
from cnnopt.cli import cli
from cnnopt.report import (
    FIGURE_KEYS,
    FIGURES,
    Figure,
    Section,
    build_sections,
    comparable_values,
    dashboard_command,
    pareto_front,
    render,
    summarize,
    write_report,
)
from cnnopt.report.layout import bins
from cnnopt.status import load_study
from cnnopt.storage import default_url, get_storage
from cnnopt.study import Study

from .test_dashboard import browser  # noqa: F401 - the real headless chromium, a fixture

REPO = Path(__file__).resolve().parents[1]


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


def test_learning_curves_name_each_trial_and_mark_pruned_ones(tiny_study):
    _, url = tiny_study
    ostudy = with_a_pruned_trial(load_study("tiny", url)[0])
    pruned = [t.number for t in ostudy.trials if t.state.name == "PRUNED"]
    assert pruned
    fig = {s.key: s for s in build_sections(ostudy)}["learning-curves"].figure
    names = [tr.name for tr in fig.data]
    for n in pruned:
        tr = next(tr for tr in fig.data if tr.name == f"trial #{n} (pruned)")
        assert tr.line.dash == "dot"
        assert tr.hovertemplate.startswith(f"trial #{n} (pruned)<br>epoch")
    cut = next(tr for tr in fig.data if tr.name == "pruned here")
    assert sorted(cut.customdata) == sorted(pruned)
    assert len(names) >= len(ostudy.trials)
    # every curve is a legend entry (a click hides it), named and hovered by its trial number
    assert fig.layout.showlegend is True
    done = next(t for t in ostudy.trials if t.state.name == "COMPLETE")
    tr = next(tr for tr in fig.data if tr.name == f"trial #{done.number}")
    assert f"trial #{done.number} (complete)" in tr.hovertemplate


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
    assert max(ax.domain[1] for ax in s["slices"].figure.select_xaxes()) > 0.95  # full width


def test_heatmap_compares_the_common_epoch_not_pruned_against_complete(tmp_path):
    st, _ = _study(tmp_path)
    low, high = "[0.001, 0.01)", "[0.01, 0.1)"
    _trial(st, 0.01, 64, [0.5, 0.6, 0.7, 0.8])  # complete, final 0.8
    _trial(st, 0.01, 32, [0.55, 0.65], "pruned")  # cut at epoch 2, alone in its cell
    _trial(st, 0.001, 128, [0.3, 0.4, 0.9, 0.95])  # complete, final 0.95
    hm = {s.key: s for s in build_sections(st)}["lr-x-batch_size"]
    # lr is log-uniform: its columns are decades, not one per value
    assert list(hm.figure.data[0].x) == [low, high] and "lr is binned into decades" in hm.caption
    # the pruned trial fills a cell of its own: every cell at epoch 2, the last all three reached
    assert _cell(hm.figure, high, "64") == 0.6
    assert _cell(hm.figure, high, "32") == 0.65
    assert _cell(hm.figure, low, "128") == 0.4
    assert "at epoch 2" in hm.caption and "2 complete, 1 pruned" in hm.caption
    assert "epoch 2" in hm.figure.data[0].colorbar.title.text

    _trial(st, 0.01, 32, [0.5, 0.6, 0.7, 0.85])  # now complete trials fill every cell
    hm = {s.key: s for s in build_sections(st)}["lr-x-batch_size"]
    assert _cell(hm.figure, high, "64") == 0.8
    assert _cell(hm.figure, high, "32") == 0.85  # the pruned trial's 0.65 is not mixed in
    assert _cell(hm.figure, low, "128") == 0.95
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


def test_a_new_figure_is_a_builder_and_one_entry(tiny_study):
    _, url = tiny_study
    ostudy, _ = load_study("tiny", url)
    extra = Figure("trial-count", lambda st: Section("", "Trials", note=f"{len(st.trials)}"))
    sections = build_sections(ostudy, [*FIGURES, extra])
    assert [s.key for s in sections] == [*FIGURE_KEYS, "trial-count"]
    assert 'id="note-trial-count">6<' in render(ostudy, url, sections[-1:])


# -- heat map columns ------------------------------------------------------------------------------


def test_continuous_parameters_are_binned_and_discrete_ones_keep_a_column_per_value():
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    rng = random.Random(0)
    lrs = [10 ** rng.uniform(-4, -1) for _ in range(50)]
    label, labels, how = bins(lrs, FloatDistribution(1e-4, 1e-1, log=True))
    assert how == "decades"
    assert labels == ["[0.0001, 0.001)", "[0.001, 0.01)", "[0.01, 0.1)"]
    assert label(0.01) == "[0.01, 0.1)" and label(0.00999) == "[0.001, 0.01)"
    # a log-uniform parameter within one decade, and a uniform one: quartiles
    label, labels, how = bins(
        [0.01 + 0.001 * i for i in range(20)], FloatDistribution(0.01, 0.1, log=True)
    )
    assert how == "quartiles" and len(labels) == 4 and labels[-1].endswith("]")
    drop = [0.5 * i / 19 for i in range(20)]
    label, labels, how = bins(drop, FloatDistribution(0, 0.5))
    assert how == "quartiles" and labels[0].startswith("[0, ") and labels[-1].endswith(", 0.5]")
    counts = {b: sum(label(v) == b for v in drop) for b in labels}
    assert sorted(counts.values()) == [5, 5, 5, 5]  # quartiles: as many trials in each
    # discrete: one column per value
    assert bins([32, 64, 128], CategoricalDistribution([32, 64, 128])) is None
    assert bins(list(range(1, 30)), IntDistribution(1, 30)) is None
    assert bins([0.1 * i for i in range(6)], FloatDistribution(0, 0.5, step=0.1)) is None
    assert bins([0.001, 0.002], None) is None  # not sampled: a fixed config value


# -- a study as wide as fashion_cnn_bn's: the page fits the window -------------------------------


@pytest.fixture(scope="module")
def wide_study(tmp_path_factory):
    """fashion_cnn_bn's search space, sampled at random for 40 trials told synthetic learning
    curves (every third one pruned at epoch 3): written straight to a journal, no training."""
    study = Study.load(REPO / "studies" / "fashion_cnn_bn.py")
    url = str(tmp_path_factory.mktemp("wide") / "wide.journal")
    st = optuna.create_study(
        study_name="wide",
        storage=get_storage(url),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    st.set_user_attr("metric", "val_accuracy")
    rng = random.Random(0)
    for i in range(40):
        t = st.ask()
        study.sample(t)
        top, pruned = 0.8 + 0.15 * rng.random(), i % 3 == 2
        for epoch in range(1, 4 if pruned else 11):
            t.report(top * (1 - 0.5**epoch), epoch)
        t.set_user_attr("flops", rng.randint(10**6, 10**8))
        t.set_user_attr("params_count", rng.randint(10**4, 10**6))
        if pruned:
            st.tell(t, state=TrialState.PRUNED)
        else:
            st.tell(t, top * (1 - 0.5**10))
    return st, url


def test_wide_study_figures_wrap_into_rows(wide_study):
    st, _ = wide_study
    params = {p for t in st.trials for p in t.params}
    assert len(params) >= 16
    s = {s.key: s for s in build_sections(st)}
    slices = s["slices"].figure
    assert slices.layout.width is None  # Optuna's 300 px per panel is gone: the page's width
    lefts = set()
    slices.for_each_xaxis(lambda ax: lefts.add(round(ax.domain[0], 3)))
    assert len(lefts) == 4  # four columns
    tops = set()
    slices.for_each_yaxis(lambda ax: tops.add(round(ax.domain[1], 3)))
    assert len(tops) == -(-len(params) // 4)  # as many rows as it takes
    par = s["parallel"].figure
    rows = [ax.ticktext for ax in par.select_xaxes()]
    assert len(rows) >= 3 and all(len(r) <= 7 for r in rows)
    assert all(r[0] == "val_accuracy" for r in rows)  # each row starts with the value
    assert {label for r in rows for label in r[1:]} == params
    # the lr heat map: decades, not one column per trial
    assert list(s["lr-x-batch_size"].figure.data[0].x)[0] == "[0.0001, 0.001)"
    assert len(s["lr-x-batch_size"].figure.data[0].x) == 3


def test_report_of_a_wide_study_fits_a_1280_px_window(browser, wide_study, tmp_path):  # noqa: F811
    _, url = wide_study
    out, _ = write_report("wide", tmp_path / "wide.html", url)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(out.as_uri())
    for key in FIGURE_KEYS:
        page.wait_for_selector(f"#fig-{key}.js-plotly-plot .main-svg", timeout=20_000)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1] == 1280, width
    right = page.evaluate(
        "Math.max(...[...document.querySelectorAll('.main-svg')]"
        ".map(e => e.getBoundingClientRect().right))"
    )
    assert right <= 1280
    # each learning curve is a legend entry named after its trial; a click hides that curve
    entry = page.locator("#fig-learning-curves .legend .traces").first
    name = entry.text_content()
    assert name.startswith("trial #")
    visible = f"el => el.data.find(d => d.name === {name!r}).visible"
    assert page.eval_on_selector("#fig-learning-curves", visible) in (None, True)
    entry.click()
    page.wait_for_function(
        f"document.querySelector('#fig-learning-curves').data"
        f".find(d => d.name === {name!r}).visible === 'legendonly'"
    )
    assert problems == []
    page.close()
