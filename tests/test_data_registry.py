import pickle

import numpy as np
import pytest
import torchvision

from cnnopt.config import DataConfig
from cnnopt.data.registry import LOADERS, _import_loaders, load_dataset
from cnnopt.errors import DataError


def test_all_loaders_registered():
    _import_loaders()
    for name in (
        "fashion_mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "sign_mnist",
        "image_folder",
        "multilabel_csv",
    ):
        assert name in LOADERS


def _fake_cifar10(root, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(range(n))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return folder


@pytest.fixture
def no_md5(monkeypatch):
    # The fake batches cannot match torchvision's checksums; nothing else is bypassed.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)


def test_cifar10_from_files(tmp_path, no_md5):
    folder = _fake_cifar10(tmp_path)
    ds = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.y_train.tolist()[:4] == [0, 1, 2, 3] and ds.classes[0] == "c0"
    # channel-first conversion of the (N, 32*32*3) channel-planar rows
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0].reshape(3, 32, 32)
    assert np.array_equal(ds.x_train[0].numpy(), first)
    # --data-dir may also name the extracted folder itself
    same = load_dataset(DataConfig(dataset="cifar10", data_dir=str(folder)))
    assert same.x_train.shape == ds.x_train.shape


def test_cifar_missing_and_offline(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("no network in tests")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(
        DataError, match=r"cifar100: cifar-100-python not found .* download failed \(OSError\)"
    ):
        load_dataset(DataConfig(dataset="cifar100", data_dir=str(tmp_path)))
