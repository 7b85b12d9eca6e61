import logging

import numpy as np
import pytest
import torch

from cnnopt.config import DataConfig
from cnnopt.data.csv import HEADER, LETTERS, read_pixel_csv
from cnnopt.data.registry import load_dataset
from cnnopt.errors import DataError


def _row(label, value=0, n=784):
    return ",".join([str(label), *[str(value)] * n])


def _write(path, rows):
    path.write_text(",".join(HEADER) + "\n" + "\n".join(rows) + "\n")


@pytest.fixture
def sign_dir(tmp_path):
    train = [_row(0, 1), _row(200), _row(10, 2), _row(3, 4, n=700), _row(24, 5), _row(9), _row(25)]
    _write(tmp_path / "sign_mnist_train.csv", train)
    _write(tmp_path / "sign_mnist_test.csv", [_row(1), _row(24)])
    return tmp_path


def test_letters():
    assert len(LETTERS) == 24 and "J" not in LETTERS and "Z" not in LETTERS
    assert LETTERS[9] == "K" and LETTERS[-1] == "Y"


def test_bad_rows_reported_and_dropped(sign_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="cnnopt"):
        ds = load_dataset(DataConfig(dataset="sign_mnist", data_dir=str(sign_dir)))
    assert ds.x_train.shape == (3, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    # letters 0 (A), 10 (K), 24 (Y) -> classes 0, 9, 23
    assert ds.y_train.tolist() == [0, 9, 23]
    assert ds.classes[ds.y_train[1]] == "K"
    assert ds.x_train[2].unique().tolist() == [5]
    assert ds.y_test.tolist() == [1, 23]
    dropped = ds.info["dropped_rows"]
    assert [d["line"] for d in dropped] == [3, 5, 7, 8]  # header is line 1
    reasons = " ".join(d["reason"] for d in dropped)
    assert (
        "label 200" in reasons and "701 fields" in reasons and "(J)" in reasons and "(Z)" in reasons
    )
    assert all(d["file"].endswith("sign_mnist_train.csv") for d in dropped)
    assert "sign_mnist_train.csv: 4 malformed rows" in caplog.text


def test_bad_rows_error_names_file_and_rows(sign_dir):
    with pytest.raises(
        DataError, match=r"sign_mnist_train\.csv: 4 malformed rows \(line 3: label 200"
    ):
        load_dataset(DataConfig(dataset="sign_mnist", data_dir=str(sign_dir), bad_rows="error"))


def test_non_numeric_values_found_by_slow_path(tmp_path):
    p = tmp_path / "x.csv"
    _write(p, [_row(0), _row(1, "x"), _row(2, "1.5"), _row(3, 300), _row(4)])
    labels, pixels, bad = read_pixel_csv(p)
    assert labels.tolist() == [0, 4] and pixels.shape == (2, 784)
    assert [b["line"] for b in bad] == [3, 4, 5]
    assert "pixel1='x'" in bad[0]["reason"] and "pixel1='1.5'" in bad[1]["reason"]
    assert "pixel1=300" in bad[2]["reason"]


def test_missing_file_and_bad_header(tmp_path):
    with pytest.raises(DataError, match="sign_mnist_train.csv not found"):
        load_dataset(DataConfig(dataset="sign_mnist", data_dir=str(tmp_path)))
    (tmp_path / "sign_mnist_train.csv").write_text("label,a,b\n1,2,3\n")
    with pytest.raises(DataError, match=r"sign_mnist_train\.csv: header has 3 columns"):
        load_dataset(DataConfig(dataset="sign_mnist", data_dir=str(tmp_path)))


def test_kaggle_subfolder_layout(tmp_path):
    for part in ("train", "test"):
        (tmp_path / f"sign_mnist_{part}").mkdir()
        _write(tmp_path / f"sign_mnist_{part}" / f"sign_mnist_{part}.csv", [_row(2)])
    ds = load_dataset(DataConfig(dataset="sign_mnist", data_dir=str(tmp_path)))
    assert ds.y_train.tolist() == [2] and ds.info["dropped_rows"] == []
    assert np.array_equal(ds.x_test.numpy(), np.zeros((1, 1, 28, 28), np.uint8))
