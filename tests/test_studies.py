"""Every shipped study file runs a two-trial smoke study through `cnnopt run`, on data made here."""

import subprocess

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torchvision.io import write_png

from cnnopt.storage import get_storage

from .conftest import ROOT, cnnopt_cmd
from .test_data import make_fashion_dir


def sign_csvs(root):
    rng = np.random.default_rng(0)
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    for name, n in (("sign_mnist_train.csv", 96), ("sign_mnist_test.csv", 24)):
        labels = [x for x in range(26) if x not in (9, 25)] * (n // 24)
        rows = [f"{y}," + ",".join(map(str, rng.integers(0, 256, 784))) for y in labels]
        if name.startswith("sign_mnist_train"):
            rows.append("200," + ",".join(["0"] * 784))  # R1's corrupt label: dropped, reported
        (root / name).write_text("\n".join([header, *rows]) + "\n")


def image_tree(root, classes=("a", "b", "c"), n=8, size=24):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            write_png(
                torch.randint(0, 255, (3, size, size), dtype=torch.uint8),
                str(root / c / f"{i}.png"),
            )


def multilabel_set(root, n=24, size=24):
    (root / "images").mkdir(parents=True)
    labels = ["cat", "dog", "tree", "sky"]
    lines = ["image,labels"]
    for i in range(n):
        write_png(
            torch.randint(0, 255, (3, size, size), dtype=torch.uint8),
            str(root / "images" / f"{i}.png"),
        )
        lines.append(f"{i}.png,{labels[i % 4]} {labels[(i + 1) % 4]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


CASES = {
    "fashion_cnn_bn": (lambda d: make_fashion_dir(d, n=200), []),
    "fashion_mlp_vs_cnn": (lambda d: make_fashion_dir(d, n=200), []),
    "fashion_budget": (lambda d: make_fashion_dir(d, n=200), []),
    "fashion_pareto": (lambda d: make_fashion_dir(d, n=200), []),
    "r2_grid": (lambda d: make_fashion_dir(d, n=200), ["--set", "train_subset=none"]),
    "sign_mnist_hyperband": (sign_csvs, []),
    "cifar10_vgg": (None, ["--set", "dataset=synthetic_rgb"]),
    "asl_transfer": (image_tree, ["--set", "image_size=32"]),
    "multilabel_transfer": (multilabel_set, ["--set", "image_size=32"]),
}


def test_every_shipped_study_has_a_smoke_case():
    assert {p.stem for p in (ROOT / "studies").glob("*.py")} - {"quick_synthetic"} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_study_smoke_run(tmp_path, name):
    make, extra = CASES[name]
    data = tmp_path / "data"
    data.mkdir()
    if make is not None:
        make(data)
    storage = str(tmp_path / "s.journal")
    r = subprocess.run(
        cnnopt_cmd(
            "run", f"studies/{name}.py", "--n-trials", "2", "--storage", storage, "--data-dir", str(data),
            "--set", "epochs=1", "--no-progress", *extra,
        ),
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name=name, storage=get_storage(storage))
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs.get("fail_reason")
        if t.user_attrs.get("over_budget"):  # recorded before its first epoch: nothing trained
            assert t.state == TrialState.PRUNED and not t.intermediate_values
            continue
        # a Pareto study's trials keep their per-epoch metric where Optuna's report cannot
        assert t.intermediate_values or t.user_attrs.get("intermediate")
