import json

import pytest
import torch
from torchvision.io import write_png

from cnnopt.config import DataConfig
from cnnopt.data.check import check_dataset, format_check
from cnnopt.data.csv import HEADER

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _csv(path, labels, value=0):
    rows = [",".join([str(lab), *[str(value)] * 784]) for lab in labels]
    path.write_text(",".join(HEADER) + "\n" + "\n".join(rows) + "\n")


def test_check_sign_mnist_counts_dropped_and_leak(tmp_path):
    _csv(tmp_path / "sign_mnist_train.csv", [0, 0, 1, 200, 24])
    _csv(tmp_path / "sign_mnist_test.csv", [1])  # all-zero image, identical to the training ones
    # bad_rows=error would stop at the first file; the check drops and lists instead
    report = check_dataset(
        DataConfig(dataset="sign_mnist", data_dir=str(tmp_path), bad_rows="error")
    )
    json.dumps(report)  # JSON-friendly, for --json
    assert report["channels"] == 1 and report["image_size"] == [28, 28]
    assert report["train"]["images"] == 4 and report["test"]["images"] == 1
    assert report["train"]["per_class"][:2] == [2, 1] and report["train"]["per_class"][23] == 1
    assert report["mean"] == [0.0] and report["std"] == [0.0]
    assert [r["line"] for r in report["dropped_rows"]] == [5]
    problems = "\n".join(report["problems"])
    assert "sign_mnist_train.csv: 1 malformed rows dropped (lines 5)" in problems
    assert "classes with no training images: 'C', 'D'" in problems
    assert "1 test images are exact copies of training images" in problems
    text = format_check(report)
    assert "4 train / 1 test images, 28x28 grey, 24 classes, single-label" in text
    assert "problems:" in text and "  Y " in text


def test_check_image_folder_without_test(tmp_path):
    for cls, n, v in (("a", 12, 0), ("b", 1, 255)):
        for i in range(n):
            img = torch.full((3, 4, 4), v, dtype=torch.uint8)
            img[0, 0, 0] = i  # distinct images
            (tmp_path / cls).mkdir(exist_ok=True)
            write_png(img, str(tmp_path / cls / f"{i}.png"))
    report = check_dataset(DataConfig(dataset="image_folder", data_dir=str(tmp_path)))
    assert report["test"] is None and report["channels"] == 3
    assert report["train"]["per_class"] == [12, 1]
    problems = "\n".join(report["problems"])
    assert "class imbalance: 'a' has 12 training images, 'b' has 1 (12x)" in problems
    assert "no test split" in problems
    assert "  a           12        -" in format_check(report)


def test_check_clean_dataset():
    report = check_dataset(DataConfig(dataset="synthetic"))
    assert report["problems"] == []
    assert format_check(report).endswith("no problems found")
