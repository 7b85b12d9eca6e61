from cnnopt.report import FIGURE_KEYS, write_report
from cnnopt.report.pareto import metric_view, summary_rows

from .test_pareto import stored_pareto_study


def test_a_pareto_study_reports_its_front_first_with_pruned_trials_marked(tmp_path):
    study, url = stored_pareto_study(tmp_path)
    out, sections = write_report("po", tmp_path / "po.html", url)
    assert [s.key for s in sections] == ["pareto", *FIGURE_KEYS]
    front = sections[0]
    assert front.figure is not None, front.note
    pruned, complete, line = front.figure.data
    assert sorted(c[0] for c in pruned.customdata) == [3, 4]  # the over-budget one has no point
    assert "pruned at epoch 3" in pruned.customdata[0][1]
    assert sorted(c[0] for c in complete.customdata) == [0, 1, 2]
    assert list(line.x) == [100_000, 400_000] and list(line.y) == [0.85, 0.90]
    text = out.read_text()
    assert 'id="fig-pareto"' in text and "maximize val_accuracy, minimize flops" in text
    assert "1 of 6 proposals were over it" in text


def test_the_metric_view_is_a_single_objective_study_of_the_metric(tmp_path):
    study, _ = stored_pareto_study(tmp_path)
    view = metric_view(study)
    assert len(view.directions) == 1 and view.best_trial.number == 0
    t3 = view.trials[3]
    assert t3.state.name == "PRUNED" and t3.intermediate_values == {1: 0.86, 2: 0.87, 3: 0.88}
    assert view.trials[0].user_attrs["flops"] == 400_000  # costs travel with the trials
    assert dict(summary_rows(study))["budget"].startswith("max_flops 1,000,000: 1 of 6")
