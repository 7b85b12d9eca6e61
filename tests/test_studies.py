"""Every shipped study file runs a two-trial smoke study through `cnnopt run`, on data made here."""

import os
import queue
import subprocess
from concurrent.futures import ThreadPoolExecutor

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
    "cifar10_vgg": (None, ["--set", "dataset=synthetic_rgb", "--set", "train_subset=128"]),
    "asl_transfer": (image_tree, ["--set", "image_size=32"]),
    "multilabel_transfer": (multilabel_set, ["--set", "image_size=32"]),
}


def test_every_shipped_study_has_a_smoke_case():
    assert {p.stem for p in (ROOT / "studies").glob("*.py")} - {"quick_synthetic"} == set(CASES)


def _smoke_run(name: str, tmp_path, cores) -> subprocess.CompletedProcess:
    make, extra = CASES[name]
    data = tmp_path / "data"
    data.mkdir()
    if make is not None:
        make(data)
    core = cores.get()
    try:
        if core is not None:  # this thread's mask, which the run and its worker inherit
            os.sched_setaffinity(0, {core})
        return subprocess.run(
            cnnopt_cmd(
                "run", f"studies/{name}.py", "--n-trials", "2",
                "--storage", str(tmp_path / "s.journal"), "--data-dir", str(data),
                "--set", "epochs=1", "--no-progress", *extra,
            ),
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        cores.put(core)


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The selected cases' `cnnopt run` processes, one per core (4 at most: memory), each held to
    its core (a run and its worker train with one thread then, and runs side by side do not
    compete for cores); each test then checks its own run."""
    names = sorted(
        {
            item.callspec.params["name"]
            for item in request.session.items
            if getattr(item, "originalname", None) == "test_study_smoke_run"
        }
    )
    cores: queue.Queue = queue.Queue()
    if hasattr(os, "sched_getaffinity"):
        for core in sorted(os.sched_getaffinity(0))[:4]:
            cores.put(core)
    else:
        cores.put(None)  # one run at a time, unpinned
    with ThreadPoolExecutor(max_workers=cores.qsize()) as pool:
        runs = {}
        for name in names:
            tmp = tmp_path_factory.mktemp(name)
            runs[name] = (tmp, pool.submit(_smoke_run, name, tmp, cores))
        yield runs
        for _, future in runs.values():
            future.cancel()


@pytest.mark.parametrize("name", sorted(CASES))
def test_study_smoke_run(smoke_runs, name):
    tmp_path, future = smoke_runs[name]
    r = future.result()
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name=name, storage=get_storage(str(tmp_path / "s.journal")))
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs.get("fail_reason")
        if t.user_attrs.get("over_budget"):  # recorded before its first epoch: nothing trained
            assert t.state == TrialState.PRUNED and not t.intermediate_values
            continue
        # a Pareto study's trials keep their per-epoch metric where Optuna's report cannot
        assert t.intermediate_values or t.user_attrs.get("intermediate")
