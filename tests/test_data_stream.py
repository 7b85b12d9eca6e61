"""Image folders over max_cache_gb: lazy ImageFiles, split without decoding, StreamLoader."""

import math

import pytest
import torch
from torchvision.io import write_png

from cnnopt.config import DataConfig, RunConfig
from cnnopt.data import folders
from cnnopt.data.check import check_dataset, format_check
from cnnopt.data.registry import load_dataset
from cnnopt.data.tensors import DeviceLoader, StreamLoader, split
from cnnopt.errors import DataError
from cnnopt.final import evaluate_test
from cnnopt.train import fit

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

TINY = 1e-6  # GiB: about 1 KB, less than the 24 images of 8x8 RGB below (4.6 KB)


@pytest.fixture
def tree(tmp_path):
    """train/{a,b} with 10 images each, test/{a,b} with 2 each; random 8x8 RGB, class a darker."""
    g = torch.Generator().manual_seed(0)
    for part, n in (("train", 10), ("test", 2)):
        for c, (lo, hi) in (("a", (0, 120)), ("b", (100, 256))):
            for i in range(n):
                path = tmp_path / part / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_png(
                    torch.randint(lo, hi, (3, 8, 8), generator=g, dtype=torch.uint8), str(path)
                )
    return tmp_path


def load(root, **kw):
    return load_dataset(DataConfig(dataset="image_folder", data_dir=str(root), image_size=8, **kw))


def test_streamed_dataset_is_not_decoded_up_front(tree, monkeypatch):
    calls = []
    decode = folders._decode_one
    monkeypatch.setattr(folders, "_decode_one", lambda p, s: calls.append(p) or decode(p, s))
    monkeypatch.setattr(folders, "CHANNEL_SAMPLE", 3)
    ds = load(tree, max_cache_gb=TINY)
    assert len(calls) == 3  # only the channel sample
    assert ds.streamed and isinstance(ds.x_train, folders.ImageFiles)
    assert ds.x_train.shape == (20, 3, 8, 8) and ds.x_test.shape == (4, 3, 8, 8)
    assert ds.in_channels == 3 and ds.image_size == 8 and ds.info["storage"] == "streamed"
    cached = load(tree)
    assert not cached.streamed and cached.info["storage"] == "cached"
    idx = torch.tensor([0, 13, 7])
    assert torch.equal(ds.x_train[idx], cached.x_train[idx])
    assert torch.equal(ds.x_test[1], cached.x_test[1])
    assert torch.equal(ds.y_train, cached.y_train)


def test_streaming_needs_image_size(tree):
    with pytest.raises(DataError, match="set image_size to stream them from disk"):
        load_dataset(DataConfig(dataset="image_folder", data_dir=str(tree), max_cache_gb=TINY))


def test_split_indexes_files_and_matches_cached_split(tree):
    lazy = split(load(tree, max_cache_gb=TINY), 0.25, seed=3)
    cached = split(load(tree), 0.25, seed=3)
    assert isinstance(lazy.x_train, folders.ImageFiles) and len(lazy.x_val) == 5
    assert torch.equal(lazy.x_train[:], cached.x_train)
    assert torch.equal(lazy.x_val[:], cached.x_val)
    assert torch.equal(lazy.y_train, cached.y_train)
    # the stats sample (2000) covers all 15 images here: the same statistics
    assert torch.allclose(lazy.mean, cached.mean) and torch.allclose(lazy.std, cached.std)
    moved = lazy.to("cpu")
    assert moved.x_train is lazy.x_train


def loaders(s, cls, seed, **kw):
    return cls(
        s.x_train, s.y_train, s.mean, s.std, 4, shuffle=True, drop_last=True, seed=seed, **kw
    )


def test_streamed_batches_equal_cached_batches_and_are_seeded(tree):
    lazy = split(load(tree, max_cache_gb=TINY), 0.25, seed=3)
    cached = split(load(tree), 0.25, seed=3)
    stream = loaders(lazy, StreamLoader, 5, num_workers=0, channels_last=True)
    device = loaders(cached, DeviceLoader, 5, channels_last=True)
    assert len(stream) == len(device) == 3 and stream.n_images == 15
    for _epoch in range(2):  # one permutation per epoch from the same generator
        for (xs, ys), (xd, yd) in zip(stream, device, strict=True):
            assert torch.equal(xs, xd) and torch.equal(ys, yd)
            assert xs.dtype == torch.float32 and xs.is_contiguous(memory_format=torch.channels_last)
    first = lambda seed: next(iter(loaders(lazy, StreamLoader, seed, num_workers=0)))[1]  # noqa: E731
    assert torch.equal(first(5), first(5))
    assert not all(torch.equal(first(5), first(s)) for s in (6, 7, 8))


def fit_on(root, **data):
    cfg = RunConfig.from_flat(
        {"dataset": "image_folder", "data_dir": str(root), "image_size": 8, "filters": [4], "conv_blocks": 1,
         "hidden": [8], "batch_size": 4, "epochs": 1, "seed": 1, "val_fraction": 0.25, **data}
    )  # fmt: skip
    ds = load_dataset(cfg.data)
    cfg = cfg.replace(in_channels=3, input_size=8, num_classes=2)
    s = split(ds, 0.25, 0)
    result = fit(cfg, s, device="cpu")
    # the final test evaluation (cnnopt train) streams the test images too
    result.test = evaluate_test(result.model, cfg, ds, s, torch.device("cpu"))
    return result


def test_fit_streams_with_a_worker_and_matches_cached(tree):
    streamed = fit_on(tree, max_cache_gb=TINY, stream_workers=1)
    cached = fit_on(tree)
    m = streamed.history[0].metrics
    assert math.isfinite(streamed.history[0].train_loss) and math.isfinite(m["val_loss"])
    assert streamed.history[0].images_per_second > 0
    assert streamed.history[0].train_loss == pytest.approx(cached.history[0].train_loss, rel=1e-5)
    assert m["val_loss"] == pytest.approx(cached.history[0].metrics["val_loss"], rel=1e-5)
    assert m["val_accuracy"] == cached.history[0].metrics["val_accuracy"]
    assert streamed.test["n_images"] == 4
    assert streamed.test["metrics"]["test_loss"] == pytest.approx(
        cached.test["metrics"]["test_loss"], rel=1e-5
    )


def test_data_check_says_cached_or_streamed(tree):
    streamed = check_dataset(DataConfig("image_folder", str(tree), image_size=8, max_cache_gb=TINY))
    assert streamed["storage"] == "streamed" and streamed["train"]["images"] == 20
    assert "streamed from disk per batch (over max_cache_gb=1e-06)" in format_check(streamed)
    cached = check_dataset(DataConfig("image_folder", str(tree), image_size=8))
    assert cached["storage"] == "cached" and cached["mean"] == streamed["mean"]
    assert "cached in memory (image folders over max_cache_gb=4 are streamed)" in format_check(
        cached
    )
