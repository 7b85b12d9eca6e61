"""`make gpu-check` (cnnopt.bench.gpucheck): the no-CUDA stop, for real, and the JSON summary with
the GPU parts (the CUDA probe, the device query and the `cnnopt ... --device cuda` commands)
stubbed at their function boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from cnnopt.bench import gpucheck
from cnnopt.bench.common import Report, Row, write_json
from cnnopt.storage import get_storage

DEVICE = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_gib": 79.2,
          "count": 1, "cuda": "13.0", "cudnn": 91000, "torch": "2.11.0", "driver": "580.159.04"}  # fmt: skip


def test_without_cuda_it_stops_at_once_with_one_line_and_nonzero_exit(tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cnnopt.bench.gpucheck", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cnnopt gpu-check: no CUDA device on this machine (torch ")
    assert not out.exists() and not (tmp_path / "gpu-check").exists()  # nothing ran


class FakeCnnopt:
    """Stands in for `cnnopt ARGS` on a GPU: writes what each real command writes."""

    def __init__(self, fail: str | None = None):
        self.fail = fail
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], log: Path) -> gpucheck.Done:
        self.calls.append(args)
        if args[0] == self.fail:
            return gpucheck.Done(1, 0.5, "cnnopt: error: out of memory")
        opt = dict(zip(args, args[1:]))
        if args[0] == "bench":
            report = Report(machine={}, plan={})
            report.rows = [
                Row("gpu", "1 worker(s) sharing cuda:0", 9000.0, "images/s", "itself (baseline)", 9000.0),
                Row("gpu", "2 worker(s) sharing cuda:0", 15000.0, "images/s", "1 worker", 9000.0),
            ]  # fmt: skip
            write_json(report, opt["--json"])
        elif args[0] == "run":
            study = optuna.create_study(
                study_name=opt["--study-name"], storage=get_storage(opt["--storage"]),
                direction="maximize",
            )  # fmt: skip
            for i, value in enumerate((0.81, 0.86)):
                study.add_trial(optuna.trial.create_trial(
                    value=value, user_attrs={"device": "cuda:0", "worker": f"w{i}",
                                             "amp": "bf16", "images_per_second": 20000.0 + i}))  # fmt: skip
        elif args[0] == "export":
            Path(opt["--out"]).write_text("{}")
        elif args[0] == "train":
            out = Path(opt["--out"])
            out.mkdir(parents=True)
            seed = int(opt.get("--set", "seed=0").split("=")[1])
            (out / "results.json").write_text(json.dumps({
                "device": "cuda:0", "amp": "bf16", "seconds_per_epoch": 3.0, "params": 288170,
                "test": {"test_accuracy": [0.9547, 0.9526, 0.9563][seed]},
                "reproduce": {"metric": "val_accuracy", "stored": 0.86, "reproduced": 0.859,
                              "difference": -0.001, "tolerance": 0.005}}))  # fmt: skip
        return gpucheck.Done(0, 1.5, "")


@pytest.fixture
def on_a_gpu(monkeypatch):
    monkeypatch.setattr(gpucheck, "cuda_available", lambda: True)
    monkeypatch.setattr(gpucheck, "device_info", lambda: dict(DEVICE))


def test_summary_holds_the_device_and_every_steps_figures(on_a_gpu, monkeypatch, tmp_path):
    fake = FakeCnnopt()
    monkeypatch.setattr(gpucheck, "run_cnnopt", fake)
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "runs" / "gpu-check.json"
    assert gpucheck.main(["--data-dir", str(data), "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["ok"] is True and s["device"] == DEVICE
    assert list(s["steps"]) == ["bench", "study", "export", "reproduce"]
    assert [r["value"] for r in s["steps"]["bench"]["rows"]] == [9000.0, 15000.0]
    study = s["steps"]["study"]
    assert study["complete"] == 2 and study["best_value"] == 0.86 and study["devices"] == ["cuda:0"]
    assert study["images_per_second_per_trial"] == [20000.0, 20001.0]
    assert s["steps"]["reproduce"]["reproduce"]["difference"] == -0.001
    # what ran: the GPU rows, a 2-worker study on the GPU, export, reproduce on the GPU
    run = next(c for c in fake.calls if c[0] == "run")
    assert run[1].endswith("studies/fashion_cnn_bn.py")
    assert ["--workers", "2"] == run[2:4] and "cuda" in run and "epochs=2" in run
    assert {"--device", "cuda"} <= set(next(c for c in fake.calls if c[0] == "train"))
    assert "--reproduce" in next(c for c in fake.calls if c[0] == "train")
    assert ["--section", "gpu", "--device", "cuda"] == next(
        c for c in fake.calls if c[0] == "bench"
    )[2:6]


def test_a_failed_study_fails_the_check_and_skips_what_needs_it(on_a_gpu, monkeypatch, tmp_path):
    fake = FakeCnnopt(fail="run")
    monkeypatch.setattr(gpucheck, "run_cnnopt", fake)
    out = tmp_path / "gpu-check.json"
    assert gpucheck.main(["--data-dir", str(tmp_path), "--out", str(out)]) == 1
    s = json.loads(out.read_text())
    assert s["ok"] is False
    assert s["steps"]["study"]["output_tail"] == "cnnopt: error: out of memory"
    assert s["steps"]["export"] == {"ok": False, "skipped": "study failed"}
    assert s["steps"]["reproduce"] == {"ok": False, "skipped": "export failed"}
    assert [c[0] for c in fake.calls] == ["bench", "run"]


def test_final_runs_the_readme_path_and_reports_test_accuracy_per_seed(
    on_a_gpu, monkeypatch, tmp_path, capsys
):
    fake = FakeCnnopt()
    monkeypatch.setattr(gpucheck, "run_cnnopt", fake)
    out = tmp_path / "gpu-final.json"
    assert gpucheck.main(["--final", "--data-dir", str(tmp_path), "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert list(s["steps"]) == ["final_study", "final_export", "final_train"]
    # the shipped study as a user runs it: full split, the file's own epochs (no --set)
    run = fake.calls[0]
    assert run[0] == "run" and "--set" not in run and run[run.index("--n-trials") + 1] == "12"
    assert run[run.index("--seed") + 1] == "0" and s["steps"]["final_study"]["study_seed"] == 0
    trains = [c for c in fake.calls if c[0] == "train"]
    assert [c[c.index("--set") + 1] for c in trains] == ["seed=0", "seed=1", "seed=2"]
    assert all(c[c.index("--epochs") + 1] == "50" and "--reproduce" not in c for c in trains)
    final = s["steps"]["final_train"]
    assert [r["test_accuracy"] for r in final["runs"]] == [0.9547, 0.9526, 0.9563]
    acc = final["test_accuracy"]
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.9545333, abs=1e-6)
    assert acc["t_low"] < 0.9526 and acc["t_high"] > 0.9563  # t(2) = 4.303: wide
    assert "final test accuracy 95.45% [" in capsys.readouterr().err


def test_final_stops_at_the_first_failed_training(on_a_gpu, monkeypatch, tmp_path):
    fake = FakeCnnopt(fail="train")
    monkeypatch.setattr(gpucheck, "run_cnnopt", fake)
    out = tmp_path / "gpu-final.json"
    assert gpucheck.main(["--final", "--data-dir", str(tmp_path), "--out", str(out)]) == 1
    final = json.loads(out.read_text())["steps"]["final_train"]
    assert final["ok"] is False and final["runs"] == []
    assert final["output_tail"] == "cnnopt: error: out of memory"
    assert [c[0] for c in fake.calls] == ["run", "export", "train"]


def test_final_runs_the_study_with_another_seed_when_asked(on_a_gpu, monkeypatch, tmp_path):
    fake = FakeCnnopt()
    monkeypatch.setattr(gpucheck, "run_cnnopt", fake)
    out = tmp_path / "gpu-final.json"
    argv = ["--final", "--study-seed", "1", "--final-seeds", "0", "--data-dir", str(tmp_path)]
    assert gpucheck.main([*argv, "--out", str(out)]) == 0
    run = fake.calls[0]
    assert run[run.index("--seed") + 1] == "1"
    assert json.loads(out.read_text())["steps"]["final_study"]["study_seed"] == 1
