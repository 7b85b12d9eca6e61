from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState
from torchvision.io import write_png

from cnnopt.cli import cli
from cnnopt.config import RunConfig
from cnnopt.errors import CnnoptError
from cnnopt.export import export
from cnnopt.final import load_checkpoint, predict_images, train_final
from cnnopt.status import load_study


@pytest.fixture(scope="module")
def best_json(tiny_study, tmp_path_factory):
    _, url = tiny_study
    path, _ = export("tiny", tmp_path_factory.mktemp("export") / "best.json", storage=url)
    return path


@pytest.fixture(scope="module")
def final_run(best_json, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "final"
    sets = {
        "crop_padding": 2,
        "hflip": True,
        "label_smoothing": 0.1,
        "tta_flip": True,
        "optimizer": "sgd_nesterov",
        "lr": 0.05,
    }
    results = train_final(
        best_json, epochs=2, schedule="onecycle", out=out, sets=sets, progress=False
    )
    return out, results


def test_final_training_writes_checkpoint_results_and_confusion_matrix(final_run):
    out, results = final_run
    assert (out / "checkpoint.pt").is_file()
    assert (out / "confusion_matrix.html").is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["mode"] == "train" and on_disk["epochs_run"] == 2
    assert 0.0 <= on_disk["test"]["test_accuracy"] <= 1.0 and on_disk["test"]["test_loss"] > 0
    assert set(on_disk["per_class"]) == {"q0", "q1", "q2", "q3"}
    assert {"precision", "recall", "f1", "support"} <= set(on_disk["per_class"]["q0"])
    cm = torch.tensor(on_disk["confusion_matrix"])
    assert cm.shape == (4, 4) and int(cm.sum()) == 128  # the synthetic test set
    assert on_disk["params"] > 0 and on_disk["flops"] > 0 and on_disk["seconds_per_epoch"] > 0
    assert on_disk["train_images"] == 512  # train + validation: the full training set
    assert on_disk["heldout_images"] == 0
    cfg = RunConfig.from_dict(on_disk["config"])
    assert cfg.train.schedule == "onecycle" and cfg.train.epochs == 2
    assert cfg.augment.crop_padding == 2 and cfg.augment.hflip and cfg.train.tta_flip
    assert cfg.train.label_smoothing == 0.1 and cfg.train.optimizer == "sgd_nesterov"
    assert "cpu" in on_disk["hardware"]


def test_load_checkpoint_round_trip(final_run):
    out, results = final_run
    model, cfg, meta = load_checkpoint(out / "checkpoint.pt")
    assert isinstance(cfg, RunConfig) and cfg.train.schedule == "onecycle"
    assert meta["classes"] == ["q0", "q1", "q2", "q3"] and len(meta["mean"]) == 1
    assert meta["epoch"] == 2 and meta["optimizer"] is not None and meta["scheduler"] is not None
    assert meta["args"]["schedule"] == "onecycle"
    assert not model.training
    # the loaded model gives the recorded test accuracy on the synthetic test set
    from cnnopt.data.registry import load_dataset

    ds = load_dataset(cfg.data)
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    x = (ds.x_test.float() / 255 - mean) / std
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=results["amp"] == "bfloat16"),
    ):
        logits = model(x).float() + model(x.flip(-1)).float()  # tta_flip
    acc = float((logits.argmax(1) == ds.y_test).float().mean())
    assert acc == pytest.approx(results["test"]["test_accuracy"], abs=0.02)


def test_reproduce_matches_stored_val_accuracy_on_cpu_tiny_data(tiny_study, tmp_path):
    # A value that a wrong split or seed would not hit by chance: not the best trial's, which on
    # some CPUs (fp32, no bf16) is 1.0 on this tiny synthetic set, but a complete trial's in between.
    _, url = tiny_study
    ostudy, _ = load_study("tiny", url)
    complete = [t for t in ostudy.get_trials(states=(TrialState.COMPLETE,)) if 0.3 < t.value < 0.99]
    assert complete, "no complete trial of the tiny study in (0.3, 0.99)"
    path, _ = export("tiny", tmp_path / "informative.json", trial=complete[0].number, storage=url)
    stored = json.loads(path.read_text())["trial"]["value"]
    results = train_final(path, reproduce=True, out=tmp_path / "rep", progress=False)
    r = results["reproduce"]
    assert r["metric"] == "val_accuracy" and r["stored"] == stored
    assert abs(r["reproduced"] - stored) <= 0.005
    assert results["train_images"] == 410 and results["heldout_images"] == 102  # its own split
    assert results["epochs_run"] == 3


def test_reproduce_refuses_changes(best_json):
    with pytest.raises(CnnoptError, match="exactly"):
        train_final(best_json, reproduce=True, epochs=5, progress=False)


def test_holdout_early_stopping_and_bad_set(best_json, tmp_path):
    results = train_final(
        best_json,
        epochs=3,
        holdout=0.25,
        patience=1,
        sets={"lr": 1e-6},  # learns nothing: the holdout loss stalls and stops training
        out=tmp_path / "h",
        progress=False,
    )
    assert results["heldout_images"] == 128 and results["train_images"] == 384
    assert "val_loss" in results["history"][0]["metrics"]
    with pytest.raises(CnnoptError, match="unknown setting"):
        train_final(best_json, sets={"nonsense": 1}, progress=False)


def test_predict_top_classes_on_png_files(final_run, tmp_path):
    out, _ = final_run
    from cnnopt.data.registry import load_dataset

    model, cfg, _ = load_checkpoint(out / "checkpoint.pt")
    ds = load_dataset(cfg.data)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        write_png(ds.x_test[i], str(p))
        paths.append(str(p))
    rgb = tmp_path / "big_rgb.png"  # another size and 3 channels: converted to the model's input
    write_png(
        ds.x_test[0].repeat(3, 1, 1).repeat_interleave(4, 1).repeat_interleave(4, 2), str(rgb)
    )
    rows = predict_images(out / "checkpoint.pt", [*paths, str(rgb)], top=2)
    assert len(rows) == 4
    for r in rows:
        assert len(r["top"]) == 2 and r["top"][0]["class"] in ("q0", "q1", "q2", "q3")
        assert r["top"][0]["probability"] >= r["top"][1]["probability"]
    r = CliRunner().invoke(cli, ["predict", str(out / "checkpoint.pt"), *paths, "-k", "3"])
    assert r.exit_code == 0, r.output
    assert r.output.count("%") == 9 and "img0.png" in r.output


def test_train_cli_runs_and_prints_test_accuracy(best_json, tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "train", str(best_json), "--epochs", "1", "--schedule", "cosine",
            "--out", str(tmp_path / "c"), "--no-progress", "--set", "hflip=true",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and (tmp_path / "c" / "results.json").is_file()
    assert "epoch 1/1" not in r.output  # --no-progress: no per-epoch lines either


def test_train_off_a_terminal_logs_a_line_per_epoch(best_json, tmp_path):
    r = CliRunner().invoke(
        cli, ["train", str(best_json), "--epochs", "2", "--out", str(tmp_path / "c")]
    )
    assert r.exit_code == 0, r.output
    assert "epoch 1/2  loss" in r.output and "epoch 2/2  loss" in r.output


def test_reproduce_mismatch_is_an_error_with_exit_code_1():
    from cnnopt.final import ReproduceMismatch, check_reproduced

    ok = {
        "reproduce": {
            "metric": "val_accuracy",
            "stored": 0.80,
            "reproduced": 0.803,
            "difference": 0.003,
            "tolerance": 0.005,
        }
    }
    check_reproduced(ok)
    bad = {"reproduce": {**ok["reproduce"], "reproduced": 0.79, "difference": -0.01}}
    with pytest.raises(ReproduceMismatch, match="1.00 points") as e:
        check_reproduced(bad)
    assert e.value.exit_code == 1
    assert "ran on" not in str(e.value)  # no hardware recorded: nothing to say about it
    # the trial ran elsewhere: the message says where, the likeliest reason for the gap
    cpu = {"cpu": "AMD EPYC", "torch_threads": 1}
    moved = {**bad["reproduce"], "stored_hardware": {**cpu, "cpu": "Intel Xeon"}, "hardware": cpu}
    with pytest.raises(ReproduceMismatch) as e:
        check_reproduced({"reproduce": moved})
    assert str(e.value).endswith(
        "; the trial ran on Intel Xeon, 1 thread(s), this run on AMD EPYC, 1 thread(s)"
    )


def test_train_checkpoint_keeps_the_grad_scaler(best_json, tmp_path):
    results = train_final(
        best_json, epochs=1, out=tmp_path / "fp16", sets={"amp": "fp16"}, progress=False
    )
    ckpt = torch.load(results["checkpoint"], weights_only=False)
    assert results["amp"] == "float16"
    assert ckpt["scaler"]["scale"] > 0 and ckpt["optimizer"] and "model" in ckpt


def test_train_on_a_gpu_that_is_not_there_is_one_line(best_json, tmp_path):
    import subprocess

    from .conftest import ROOT, cnnopt_cmd

    n = torch.cuda.device_count()
    out = tmp_path / "none"
    cmd = cnnopt_cmd("train", str(best_json), "--device", f"cuda:{n}", "--out", str(out))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert (
        r.stderr.startswith(f"cnnopt: error: --device cuda:{n}: no ") and r.stderr.count("\n") == 1
    )
    assert not out.exists()
