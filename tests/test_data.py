import gzip

import numpy as np
import pytest
import torch

from cnnopt.config import DataConfig
from cnnopt.data import load_split
from cnnopt.data.registry import load_dataset, read_idx
from cnnopt.data.tensors import DeviceLoader, split
from cnnopt.errors import DataError


def write_idx(path, array, gz=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_fashion_dir(root, n=40, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 255, (n, 28, 28)), gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", np.arange(n) % 10, gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 255, (10, 28, 28)), gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", np.arange(10), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_in_data_dir_load_offline(tmp_path, gz):
    make_fashion_dir(tmp_path, gz=gz)
    ds = load_dataset(DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path)))
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.tolist()[:3] == [0, 1, 2] and ds.num_classes == 10
    assert ds.classes[9] == "Ankle boot"


def test_corrupt_idx_names_the_file(tmp_path):
    make_fashion_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    )
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: expected 9 bytes"):
        read_idx(tmp_path / "train-labels-idx1-ubyte.gz")


def test_missing_files_offline_give_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_network)
    with pytest.raises(DataError, match="not found in .* and the download failed .*--data-dir"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path / "empty")))


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'fashion'.*fashion_mnist"):
        load_dataset(DataConfig(dataset="fashion"))


def test_split_is_fixed_seeded_and_disjoint():
    ds = load_dataset(DataConfig(dataset="synthetic"))
    a, b = split(ds, 0.2, seed=5), split(ds, 0.2, seed=5)
    assert torch.equal(a.x_val, b.x_val)
    assert a.x_val.shape[0] == round(512 * 0.2) and a.x_train.shape[0] + a.x_val.shape[0] == 512
    sub = split(ds, 0.25, seed=5, subset=100)
    assert sub.x_train.shape[0] == 75 and sub.x_val.shape[0] == 25


def test_split_is_built_once_per_process():
    cfg = DataConfig(dataset="synthetic", split_seed=3)
    _, s1 = load_split(cfg)
    _, s2 = load_split(cfg)
    assert s1 is s2


def test_device_loader_batches_normalised_and_shuffled():
    ds = load_dataset(DataConfig(dataset="synthetic"))
    sp = split(ds, 0.2, 0)
    loader = DeviceLoader(
        sp.x_train, sp.y_train, sp.mean, sp.std, 100, shuffle=True, drop_last=True
    )
    batches = list(loader)
    assert len(batches) == len(loader) == sp.x_train.shape[0] // 100
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (100, 1, 16, 16)
    assert abs(float(torch.cat([b[0] for b in batches]).mean())) < 0.1
    assert not torch.equal(y, sp.y_train[:100])


def test_real_fashion_mnist_loads(fashion):
    ds = load_dataset(DataConfig(dataset="fashion_mnist", data_dir=str(fashion)))
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10


def test_split_cache_is_small_and_keyed_by_content():
    from cnnopt import data
    from cnnopt.data import registry

    data._SPLITS.clear()
    # a search over train_subset and val_fraction: one new split per value, never all kept
    for subset in range(100, 400, 20):
        for frac in (0.1, 0.2):
            load_split(DataConfig(dataset="synthetic", train_subset=subset, val_fraction=frac))
    assert len(data._SPLITS) == data.MAX_SPLITS
    # equal content hits, even when the dataset object is a new one (reloaded: a new id())
    cfg = DataConfig(dataset="synthetic", train_subset=60, split_seed=4)
    _, first = load_split(cfg)
    registry._CACHE.clear()
    _, again = load_split(DataConfig(dataset="synthetic", train_subset=60, split_seed=4))
    assert again is first
    # the most recently used split stays when another one is added
    load_split(DataConfig(dataset="synthetic", train_subset=80))
    _, still = load_split(cfg)
    assert still is first


def test_missing_fashion_mnist_fails_when_required(monkeypatch):
    """CI sets CNNOPT_REQUIRE_FASHION=1 where the data is: the real-data tests must fail there
    without it, not skip."""
    from . import conftest

    monkeypatch.setattr(conftest, "fashion_dir", lambda: None)
    monkeypatch.setenv("CNNOPT_REQUIRE_FASHION", "1")
    with pytest.raises(pytest.fail.Exception, match="CNNOPT_REQUIRE_FASHION=1"):
        conftest.require_fashion()
    monkeypatch.delenv("CNNOPT_REQUIRE_FASHION")
    with pytest.raises(pytest.skip.Exception, match="CNNOPT_TEST_FASHION_DIR"):
        conftest.require_fashion()


def test_split_cache_makes_room_before_it_copies_to_the_device(monkeypatch):
    """At most MAX_SPLITS splits on the device at any moment: the oldest goes before the new one
    is copied (not after: MAX_SPLITS + 1 at the peak). A copy that runs out of memory drops
    every other split and tries once more, so it does not fail every trial of that data."""
    from cnnopt import data
    from cnnopt.data.tensors import Split

    data._SPLITS.clear()
    real_to = Split.to
    cached_at_copy: list[int] = []
    oom_once = {"armed": False}

    def watched_to(self, device):
        cached_at_copy.append(len(data._SPLITS))
        if oom_once["armed"] and data._SPLITS:
            oom_once["armed"] = False
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_to(self, device)

    monkeypatch.setattr(Split, "to", watched_to)
    for subset in (100, 120, 140, 160):
        load_split(DataConfig(dataset="synthetic", train_subset=subset))
        assert len(data._SPLITS) <= data.MAX_SPLITS
    assert cached_at_copy == [0, 1, 1, 1]  # MAX_SPLITS - 1 = 1 other split during each copy
    oom_once["armed"] = True
    _, new = load_split(DataConfig(dataset="synthetic", train_subset=180))
    assert cached_at_copy[-2:] == [1, 0]  # the first copy failed; the retry had the device alone
    assert list(data._SPLITS.values()) == [new]


def test_a_split_goes_to_the_gpu_without_pinning_the_dataset(monkeypatch):
    """The one copy of a split to the GPU is a plain copy: pin_memory() of the whole dataset
    would stay page-locked (torch caches pinned blocks) for the worker's life. CUDA is faked at
    Tensor.to; pin_memory must not be called."""
    from cnnopt.data.tensors import split

    s = split(load_dataset(DataConfig(dataset="synthetic", train_subset=100)), 0.2, 0)
    real_to = torch.Tensor.to
    copies = []

    def fake_to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cuda":
            copies.append((tuple(self.shape), kwargs.get("non_blocking", False)))
            return self  # "on the GPU"
        return real_to(self, *args, **kwargs)

    def no_pinning(self, *a, **k):
        raise AssertionError("pin_memory() of a whole split")

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pinning)
    s.to("cuda:0")
    assert [shape for shape, _ in copies][:4] == [
        tuple(s.x_train.shape),
        tuple(s.y_train.shape),
        tuple(s.x_val.shape),
        tuple(s.y_val.shape),
    ]
    assert not any(non_blocking for _, non_blocking in copies)  # pageable: a synchronous copy
