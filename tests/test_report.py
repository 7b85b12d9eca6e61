from __future__ import annotations

import optuna
from click.testing import CliRunner

from cnnopt.cli import cli
from cnnopt.report import FIGURE_KEYS, build_sections, pareto_front, write_report
from cnnopt.status import load_study
from cnnopt.storage import get_storage


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
    assert max(z) == max(t.value for t in complete)
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
