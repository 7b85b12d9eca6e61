from __future__ import annotations

import json
import logging

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from cnnopt.cli import cli
from cnnopt.config import RunConfig
from cnnopt.errors import StorageError
from cnnopt.export import build_export, export, load_export
from cnnopt.status import load_study
from cnnopt.storage import get_storage


def test_export_best_has_everything_to_rebuild_the_run(tiny_study, tmp_path):
    study, url = tiny_study
    path, data = export("tiny", tmp_path / "best.json", storage=url)
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(data))
    ostudy, _ = load_study("tiny", url)
    best = ostudy.best_trial
    t = on_disk["trial"]
    assert t["number"] == best.number and t["value"] == best.value
    assert t["params"] == best.params and t["metric"] == "val_accuracy"
    assert t["seed"] == 0 and t["params_count"] > 0 and t["flops"] > 0
    assert len(t["history"]) == 3 and {"train_loss", "val_accuracy"} <= set(t["history"][0])
    cfg = RunConfig.from_dict(on_disk["config"])
    assert cfg.train.lr == best.params["lr"] and cfg.model.batchnorm == best.params["batchnorm"]
    assert cfg.data.dataset == "synthetic" and cfg.model.num_classes == 4
    assert on_disk["config_source"] == "config user attribute"
    f = on_disk["study"]["file"]
    assert f["path"] == str(study.path) and f["sha256"] == study.sha256
    assert f["current_sha256"] == study.sha256 and on_disk["warnings"] == []
    assert on_disk["study"]["settings"]["pruner"] == "median"
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["versions"]["optuna"] == optuna.__version__
    assert "cnnopt" in on_disk["versions"]


def test_export_yaml_and_a_chosen_trial_via_cli(tiny_study, tmp_path):
    _, url = tiny_study
    out = tmp_path / "t1.yaml"
    r = CliRunner().invoke(
        cli,
        ["export", "tiny", "--storage", url, "--trial", "1", "--format", "yaml", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    data = yaml.safe_load(out.read_text())
    assert data["trial"]["number"] == 1
    assert load_export(out)["trial"]["number"] == 1  # the loader reads YAML too


def test_export_warns_when_the_study_file_changed(tmp_path, caplog):
    from .conftest import make_study

    study, url = make_study(tmp_path, "changed", n_trials=1, epochs=1)
    study.path.write_text(study.path.read_text() + "\n# edited\n")
    with caplog.at_level(logging.WARNING, logger="cnnopt"):
        _, data = export("changed", tmp_path / "b.json", storage=url)
    assert any("changed since the study ran" in w for w in data["warnings"])
    assert "changed since the study ran" in caplog.text


def test_export_replays_the_study_file_when_the_config_attr_is_missing(tmp_path):
    from .conftest import make_study

    study, url = make_study(tmp_path, "old", n_trials=0)
    ostudy, _ = load_study("old", url)
    params = {"lr": 0.01, "batch_size": 64, "batchnorm": "before", "activation": "gelu"}
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True),
        "batch_size": optuna.distributions.CategoricalDistribution([32, 64]),
        "batchnorm": optuna.distributions.CategoricalDistribution(["none", "before", "after"]),
        "activation": optuna.distributions.CategoricalDistribution(["relu", "gelu"]),
    }
    ostudy.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5))
    _, data = export("old", tmp_path / "b.json", storage=url)
    assert data["config_source"] == "study file replayed on the params"
    cfg = RunConfig.from_dict(data["config"])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.model.batchnorm) == (0.01, 64, "before")
    assert cfg.model.filters == (4, 8)  # the study file's fixed value


def test_export_without_complete_trials_says_so(tmp_path):
    url = str(tmp_path / "e.journal")
    optuna.create_study(study_name="empty", storage=get_storage(url))
    with pytest.raises(StorageError, match="no complete trial"):
        export("empty", tmp_path / "b.json", storage=url)
    with pytest.raises(StorageError, match="no trial #7"):
        export("empty", tmp_path / "b.json", trial=7, storage=url)


def test_export_of_a_pareto_study_lists_the_front_and_exports_any_trial(tmp_path):
    from .test_pareto import stored_pareto_study

    _, url = stored_pareto_study(tmp_path)
    out = tmp_path / "front.json"
    r = CliRunner().invoke(cli, ["export", "po", "--storage", url, "--pareto", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "#3: val_accuracy 0.8800, flops 50,000 (pruned at epoch 3)" in r.output
    front = json.loads(out.read_text())
    assert front["objectives"] == ["val_accuracy", "flops"]
    assert [p["number"] for p in front["front"]] == [0, 3, 1]
    # no single best trial: a chosen one, pruned or not
    r = CliRunner().invoke(cli, ["export", "po", "--storage", url, "-o", str(tmp_path / "b.json")])
    assert r.exit_code != 0 and "pass --trial N" in str(r.exception)
    data = build_export(*_loaded(url, 1))
    assert data["trial"]["values"] == [0.85, 100_000] and data["trial"]["value"] == 0.85
    assert data["study"]["direction"] == "maximize,minimize"
    over = build_export(*_loaded(url, 5))
    assert over["trial"]["over_budget"] == ["flops 2,000,000 > 1,000,000"]


def _loaded(url, number):
    from cnnopt.status import load_study

    ostudy, _ = load_study("po", url)
    return ostudy, ostudy.trials[number], url


def test_a_warm_start_is_named_as_written_down_in_status_export_and_training(tmp_path):
    """The study file's warm start and a sampled trial: every result built on them says which."""
    from rich.console import Console

    from cnnopt.status import print_status, study_status

    from .conftest import STUDY_SOURCE, make_study

    warm = (
        "enqueue = [{'lr': 0.02, 'batch_size': 32, 'batchnorm': 'after', 'activation': 'relu'}]\n"
    )
    src = STUDY_SOURCE.format(name="ws", epochs=1) + warm
    make_study(tmp_path, "ws", n_trials=2, source=src)
    url = str(tmp_path / "storage" / "ws.journal")
    ostudy, _ = load_study("ws", url)
    st = study_status(ostudy, url)
    best = ostudy.best_trial
    expected = (
        "written into the study file (enqueue)" if best.number == 0 else "found by the search"
    )
    assert st.best_source == expected
    console = Console(record=True, width=200)
    print_status(st, console)
    assert f"#{best.number}: {best.value:.4f} ({expected})" in console.export_text()
    _, first = export("ws", tmp_path / "t0.json", trial=0, storage=url)
    _, second = export("ws", tmp_path / "t1.json", trial=1, storage=url)
    assert first["trial"]["source"] == "written into the study file (enqueue)"
    assert second["trial"]["source"] == "found by the search"
    r = CliRunner().invoke(
        cli, ["train", str(tmp_path / "t0.json"), "--epochs", "1", "--out", str(tmp_path / "f"),
              "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "trial #0, written into the study file (enqueue)" in r.output
    results = json.loads((tmp_path / "f" / "results.json").read_text())
    assert results["source"] == "written into the study file (enqueue)"
