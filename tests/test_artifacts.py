"""Trial artifacts through Optuna's artifact API: learning curves of every finished trial, the best
checkpoint, `cnnopt train`'s results, `cnnopt export --checkpoint`, and the store's location."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState
from torchvision.io import write_png

from cnnopt import artifacts as A
from cnnopt.checkpoint import CheckpointStore
from cnnopt.cli import cli
from cnnopt.errors import ArtifactError
from cnnopt.export import export
from cnnopt.final import load_checkpoint, predict_images, train_final
from cnnopt.objective import Objective
from cnnopt.runner import open_study
from cnnopt.status import load_study
from cnnopt.study import Study
from cnnopt.train import Interrupted

from .conftest import ROOT, STUDY_SOURCE, cnnopt_cmd


def names(ostudy, trial) -> list[str]:
    return sorted(m.filename for m in A.trial_artifacts(ostudy, trial))


def read(ostudy, meta) -> bytes:
    with A.open_store(A.study_location(ostudy)).open_reader(meta.artifact_id) as f:
        return f.read()


def tiny(tmp_path, name="art", epochs=3, checkpoint=False, url=None):
    """A tiny study whose artifacts go to tmp_path/artifacts; returns (Study, url, ostudy)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = STUDY_SOURCE.format(name=name, epochs=epochs)
    source += f"\nartifacts = {str(tmp_path / 'artifacts')!r}\ncheckpoint = {checkpoint}\n"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    study = Study.load(path)
    url = url or str(tmp_path / f"{name}.journal")
    return study, url, open_study(study, url)


# -- locations -----------------------------------------------------------------------------------


def test_location_default_none_and_s3_without_boto3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert A.resolve_location(None, "s") == str(tmp_path / "storage/artifacts/s")
    assert A.resolve_location("none", "s") is None
    assert A.resolve_location("s3://b/p", "s") == "s3://b/p"
    store = A.open_store(A.resolve_location(None, "s"))
    assert not (tmp_path / "storage").exists()  # opening a store writes nothing
    monkeypatch.setitem(sys.modules, "boto3", None)  # boto3 is an optional extra
    with pytest.raises(ArtifactError, match=r"s3://b/p: S3 needs boto3 \(pip install"):
        A.open_store("s3://b/p")
    with pytest.raises(ArtifactError, match="expected s3://bucket"):
        A.open_store("s3://")
    assert store.location.endswith("storage/artifacts/s")


def test_run_records_the_location_and_stops_on_a_bad_one(tmp_path, monkeypatch):
    study, url, ostudy = tiny(tmp_path)
    assert ostudy.user_attrs["artifacts"] == str(tmp_path / "artifacts")
    monkeypatch.setitem(sys.modules, "boto3", None)
    bad = Study.load(study.path, {"artifacts": "s3://bucket/x", "name": "other"})
    with pytest.raises(ArtifactError, match="needs boto3"):
        open_study(bad, url)


# -- what the objective uploads ------------------------------------------------------------------


def test_every_finished_trial_gets_its_learning_curve(tmp_path):
    study, url, ostudy = tiny(tmp_path)
    arts = A.TrialArtifacts(A.study_location(ostudy), study.settings.metric, png=False)
    ostudy.optimize(Objective(study, "cpu", artifacts=arts), n_trials=5)
    # a trial stopped after its first epoch fails, with one epoch of history
    stopper = Objective(study, "cpu", should_stop=lambda: True, artifacts=arts)
    with pytest.raises(Interrupted):
        ostudy.optimize(stopper, n_trials=1)
    trials = ostudy.get_trials()
    states = {t.state for t in trials}
    assert {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL} <= states, states
    for t in trials:
        assert names(ostudy, t) == [f"trial-{t.number}-learning-curve.html"], t.number
        (meta,) = A.trial_artifacts(ostudy, t)
        assert meta.mimetype == "text/html"
        html = read(ostudy, meta).decode()
        assert "val_loss" in html and "train_loss" in html and "val_accuracy" in html
        last = max(t.intermediate_values)
        marked = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(t.state)
        if marked:
            assert f"{marked} at epoch {last}" in html
        else:
            assert "pruned at" not in html and "failed at" not in html


def test_learning_curve_png_when_kaleido_runs_and_one_warning_when_not(
    tmp_path, monkeypatch, caplog
):
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.5},
        {"epoch": 2, "train_loss": 0.7, "val_loss": 0.8, "val_accuracy": 0.6},
    ]
    fig = A.learning_curve_figure(history, "val_accuracy", "pruned", "t")
    monkeypatch.setitem(A._png, "ok", None)
    out = A.write_figure(fig, tmp_path / "ok")
    if A._png["ok"] is False:
        pytest.skip("kaleido cannot start a Chromium here")
    assert [p.name for p in out] == ["ok.html", "ok.png"]
    assert (tmp_path / "ok.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no usable browser: HTML only, and the reason said once, not once per figure
    monkeypatch.setitem(A._png, "ok", None)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    with caplog.at_level(logging.WARNING, logger="cnnopt"):
        for i in range(3):
            assert [p.suffix for p in A.write_figure(fig, tmp_path / f"f{i}")] == [".html"]
    assert sum("HTML only" in r.message for r in caplog.records) == 1


def test_best_checkpoint_is_an_artifact_and_export_fetches_it(tmp_path):
    study, url, ostudy = tiny(tmp_path, epochs=2, checkpoint=True)
    arts = A.TrialArtifacts(A.study_location(ostudy), study.settings.metric, png=False)
    ckpts = CheckpointStore(study.name, root=tmp_path / "ckpt")
    ostudy.optimize(Objective(study, "cpu", checkpoints=ckpts, artifacts=arts), n_trials=3)
    best = ostudy.best_trial
    assert f"trial-{best.number}-checkpoint.pt" in names(ostudy, best)
    out = tmp_path / "dl" / "best.pt"
    r = CliRunner().invoke(
        cli,
        ["export", study.name, "--storage", url, "-o", str(tmp_path / "b.json")]
        + ["--checkpoint", str(out)],
    )
    assert r.exit_code == 0, r.output
    assert f"trial-{best.number}-checkpoint.pt" in r.output
    # the very weights the study kept, loadable for predictions without retraining
    kept = torch.load(ckpts.best_path, weights_only=True)
    model, cfg, meta = load_checkpoint(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, kept["model"][k]), k
    assert meta["trial"] == best.number and len(meta["classes"]) == cfg.model.num_classes
    assert len(meta["mean"]) == cfg.model.in_channels
    image = tmp_path / "x.png"
    write_png(torch.randint(0, 255, (1, 16, 16), dtype=torch.uint8), str(image))
    (pred,) = predict_images(out, [image], top=2)
    assert pred["top"][0]["class"] in meta["classes"]
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["checkpoint"]["path"] == str(out)
    # a trial without one: one line saying why
    other = next(
        t for t in ostudy.get_trials() if not any(n.endswith(".pt") for n in names(ostudy, t))
    )
    with pytest.raises(ArtifactError, match=f"trial #{other.number} .* no checkpoint artifact"):
        export(study.name, tmp_path / "o.json", other.number, storage=url, checkpoint=out)


def test_train_attaches_its_results_to_the_trial(tiny_study, tmp_path):
    _, url = tiny_study
    path, data = export("tiny", tmp_path / "best.json", storage=url)
    results = train_final(path, epochs=1, out=tmp_path / "run", progress=False)
    ostudy, _ = load_study("tiny", url)
    trial = ostudy.trials[data["trial"]["number"]]
    got = names(ostudy, trial)
    for f in ("final-checkpoint.pt", "final-results.json", "final-confusion_matrix.html"):
        assert f in got
    assert results["artifacts"] == [n for n in results["artifacts"] if n in got]
    meta = next(m for m in A.trial_artifacts(ostudy, trial) if m.filename == "final-results.json")
    assert json.loads(read(ostudy, meta))["epochs_run"] == 1
    # the retrained checkpoint is the one `export --checkpoint` prefers
    assert A.find_checkpoint(ostudy, trial).filename == "final-checkpoint.pt"


def test_dashboard_store_spans_the_studies_of_a_storage(tmp_path):
    # two studies in one storage, their artifacts in two folders
    sa, url, oa = tiny(tmp_path / "a", "a")
    sb, _, ob = tiny(tmp_path / "b", "b", url=url)
    ida = A.upload_to_trial(A.open_store(A.study_location(oa)), oa.ask(), sa.path)
    idb = A.upload_to_trial(A.open_store(A.study_location(ob)), ob.ask(), sb.path)
    store = A.storage_store(oa._storage)
    assert isinstance(store, A.Chain)
    with store.open_reader(ida) as f:
        assert f.read() == sa.path.read_bytes()
    with store.open_reader(idb) as f:
        assert f.read() == sb.path.read_bytes()
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        store.open_reader("0000")


def test_png_unavailable_looks_for_a_browser_without_starting_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    assert "no Chromium found" in A.png_unavailable()
    monkeypatch.setenv("BROWSER_PATH", sys.executable)  # an executable file: found
    assert A.png_unavailable() is None


def test_cnnopt_run_uploads_from_its_workers_and_says_html_only_once(tmp_path):
    store = tmp_path / "arts"
    r = subprocess.run(
        cnnopt_cmd(
            "run",
            "studies/quick_synthetic.py",
            "--workers",
            "2",
            "--n-trials",
            "2",
            "--storage",
            str(tmp_path / "q.journal"),
            "--artifacts",
            str(store),
            "--set",
            "epochs=1",  # a learning curve per trial is the point, not its length
            "--device",
            "cpu",  # not the point; `auto` would import torch in the runner to count GPUs
            "--no-progress",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "BROWSER_PATH": str(tmp_path / "no-chromium")},
    )
    assert r.returncode == 0, r.stderr
    # no browser for PNG: said once by the run, not once per worker
    assert r.stderr.count("HTML only") == 1, r.stderr
    ostudy, _ = load_study("quick_synthetic", str(tmp_path / "q.journal"))
    assert ostudy.user_attrs["artifacts"] == str(store)
    for t in ostudy.get_trials():
        got = names(ostudy, t)
        assert f"trial-{t.number}-learning-curve.html" in got
        assert f"trial-{t.number}-learning-curve.png" not in got
        for m in A.trial_artifacts(ostudy, t):
            assert (store / m.artifact_id).is_file()


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API on localhost (moto's server), for Boto3ArtifactStore; yields a boto3 client."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="studies")
    yield client
    server.stop()


def test_s3_location_keeps_artifacts_under_its_prefix(tmp_path, s3):
    source = STUDY_SOURCE.format(name="s3art", epochs=2) + '\nartifacts = "s3://studies/team/a"\n'
    path = tmp_path / "s3art.py"
    path.write_text(textwrap.dedent(source))
    study = Study.load(path)
    ostudy = open_study(study, str(tmp_path / "s3.journal"))
    assert ostudy.user_attrs["artifacts"] == "s3://studies/team/a"
    arts = A.TrialArtifacts(A.study_location(ostudy), study.settings.metric, png=False)
    ostudy.optimize(Objective(study, "cpu", artifacts=arts), n_trials=2)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="studies")["Contents"])
    ids = sorted(
        f"team/a/{m.artifact_id}" for t in ostudy.trials for m in A.trial_artifacts(ostudy, t)
    )
    assert keys == ids and len(keys) == 2
    meta = A.trial_artifacts(ostudy, ostudy.trials[0])[0]
    assert b"val_accuracy" in read(ostudy, meta)


def test_train_says_how_to_attach_when_the_exports_password_is_masked(tmp_path, caplog):
    export_data = {
        "study": {"name": "x", "storage": "postgresql+psycopg2://u:***@db:5432/x"},
        "trial": {"number": 3},
    }
    f = tmp_path / "results.json"
    f.write_text("{}")
    with caplog.at_level(logging.WARNING, logger="cnnopt"):
        assert A.attach_final_run(export_data, [f], "train") == []
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "x trial #3" in msg and "pass --storage URL" in msg
