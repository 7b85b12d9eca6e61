"""End to end through cnnopt.train.fit with the datasets and models of this branch: a
sign_mnist-shaped CSV, a multi-label image set and a transfer-learning backbone."""

import math

import pytest
import torch
from torchvision.io import write_png

from cnnopt.config import RunConfig
from cnnopt.data.csv import HEADER
from cnnopt.data.registry import load_dataset
from cnnopt.data.tensors import split
from cnnopt.train import fit

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def run(ds, **flat):
    base = {
        "dataset": ds.name, "in_channels": ds.in_channels, "input_size": ds.image_size,
        "num_classes": ds.num_classes, "epochs": 1, "batch_size": 16, "amp": "off",
        "filters": [8], "conv_blocks": 1, "hidden": [16],
    }  # fmt: skip
    cfg = RunConfig.from_flat({**base, **flat})
    sp = split(ds, 0.25, seed=0, subset=cfg.data.train_subset)
    return fit(cfg, sp, multilabel=ds.multilabel)


def test_fit_sign_mnist_csv(tmp_path):
    g = torch.Generator().manual_seed(0)
    for part, n in (("train", 64), ("test", 8)):
        labels = torch.randint(0, 24, (n,), generator=g)
        labels[labels == 9] = 10
        pix = torch.randint(0, 256, (n, 784), generator=g)
        rows = [",".join(map(str, [int(lab), *p.tolist()])) for lab, p in zip(labels, pix)]
        (tmp_path / f"sign_mnist_{part}.csv").write_text(
            ",".join(HEADER) + "\n" + "\n".join(rows) + "\n"
        )
    ds = load_dataset(
        RunConfig.from_flat({"dataset": "sign_mnist", "data_dir": str(tmp_path)}).data
    )
    res = run(ds, data_dir=str(tmp_path))
    m = res.history[-1].metrics
    assert math.isfinite(m["val_loss"]) and 0 <= m["val_accuracy"] <= 1


def test_fit_multilabel(tmp_path):
    g = torch.Generator().manual_seed(0)
    names = ["sky", "sea", "tree"]
    rows = []
    for i in range(40):
        write_png(
            torch.randint(0, 256, (3, 12, 12), generator=g, dtype=torch.uint8),
            str(tmp_path / f"{i}.png"),
        )
        labs = [n for n in names if torch.rand(1, generator=g) < 0.5]
        rows.append(f"{i}.png,{' '.join(labs)}")
    (tmp_path / "labels.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    ds = load_dataset(
        RunConfig.from_flat({"dataset": "multilabel_csv", "data_dir": str(tmp_path)}).data
    )
    assert ds.multilabel and ds.y_train.shape == (40, 3)
    res = run(ds, data_dir=str(tmp_path), mixup=0.2, hflip=True)
    m = res.history[-1].metrics
    assert {
        "val_micro_f1",
        "val_macro_f1",
        "val_custom_accuracy",
        "val_subset_accuracy",
    } <= m.keys()
    assert math.isfinite(m["val_loss"])


def test_fit_transfer_backbone():
    ds = load_dataset(RunConfig.from_flat({"dataset": "synthetic"}).data)
    res = run(ds, family="mobilenet_v3_small", freeze="last:1", train_subset=64)
    assert math.isfinite(res.history[-1].metrics["val_loss"])
    assert res.flops > 0
