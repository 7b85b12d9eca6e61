"""Dataset registry: name -> loader. One place that knows every dataset a study can name.

A loader takes a DataConfig and returns a ``Dataset`` (uint8 tensors on the CPU). Loading is
cached per process, so a worker reads its dataset once and every trial reuses it.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnnopt.config import DataConfig
from cnnopt.data.tensors import Dataset
from cnnopt.errors import DataError

Loader = Callable[[DataConfig], Dataset]
LOADERS: dict[str, Loader] = {}
_CACHE: dict[tuple, Dataset] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn

    return deco


def data_dir(cfg: DataConfig) -> Path:
    """--data-dir, else $CNNOPT_DATA_DIR, else ./data."""
    return Path(cfg.data_dir or os.environ.get("CNNOPT_DATA_DIR") or "data").expanduser()


def dataset_key(cfg: DataConfig) -> tuple:
    """What a loaded dataset's content depends on: equal keys, equal tensors."""
    return (
        cfg.dataset,
        str(data_dir(cfg)),
        cfg.image_size,
        cfg.bad_rows,
        cfg.label_csv,
        cfg.max_cache_gb,
    )


def load_dataset(cfg: DataConfig) -> Dataset:
    """The dataset a DataConfig names, loaded once per process."""
    _import_loaders()
    if cfg.dataset not in LOADERS:
        raise DataError(f"unknown dataset {cfg.dataset!r}; known: {', '.join(sorted(LOADERS))}")
    key = dataset_key(cfg)
    if key not in _CACHE:
        _CACHE[key] = LOADERS[cfg.dataset](cfg)
    return _CACHE[key]


def _import_loaders() -> None:
    # Loaders of other formats live in their own modules and register themselves on import.
    import importlib

    for mod in ("cnnopt.data.csv", "cnnopt.data.folders"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


# -- MNIST-style IDX files (FashionMNIST, MNIST) ------------------------------------------------

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> torch.Tensor:
    """Read one IDX file (gzip or plain) into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(
            f"{path}: expected {expected} bytes of data for shape {dims}, found {len(raw) - offset}"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy())


def _find_idx(root: Path, stem: str) -> Path | None:
    """Look for an IDX file in root, root/raw and torchvision's root/<Name>/raw layouts."""
    for folder in (root, root / "raw", *root.glob("*/raw")):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load_idx_dataset(cfg: DataConfig, tv_class: str, classes: list[str]) -> Dataset:
    root = data_dir(cfg)
    found = {k: _find_idx(root, v) for k, v in _IDX_FILES.items()}
    if all(found.values()):
        tensors = {k: read_idx(p) for k, p in found.items()}  # type: ignore[arg-type]
        source = str(root)
    else:
        import torchvision

        try:
            train = getattr(torchvision.datasets, tv_class)(
                root=str(root), train=True, download=True
            )
            test = getattr(torchvision.datasets, tv_class)(
                root=str(root), train=False, download=True
            )
        except Exception as e:  # noqa: BLE001 - any download failure is the same to the user
            missing = ", ".join(v for k, v in _IDX_FILES.items() if not found[k])
            raise DataError(
                f"{cfg.dataset}: {missing} not found in {root} and the download failed "
                f"({type(e).__name__}); pass --data-dir with the IDX files (.gz is fine)"
            ) from None
        tensors = {
            "train_x": train.data,
            "train_y": train.targets,
            "test_x": test.data,
            "test_y": test.targets,
        }
        source = "torchvision"
    return Dataset(
        name=cfg.dataset,
        x_train=tensors["train_x"].unsqueeze(1).contiguous(),
        y_train=tensors["train_y"].long(),
        x_test=tensors["test_x"].unsqueeze(1).contiguous(),
        y_test=tensors["test_y"].long(),
        classes=classes,
        info={"source": source},
    )


FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> Dataset:
    return _load_idx_dataset(cfg, "FashionMNIST", FASHION_CLASSES)


@register("mnist")
def mnist(cfg: DataConfig) -> Dataset:
    return _load_idx_dataset(cfg, "MNIST", [str(i) for i in range(10)])


# -- CIFAR-10 / CIFAR-100 (torchvision's pickled batches) --------------------------------------


def _load_cifar(cfg: DataConfig, tv_class: str) -> Dataset:
    import torchvision

    cls = getattr(torchvision.datasets, tv_class)
    root = data_dir(cfg)
    if root.name == cls.base_folder:  # --data-dir pointing at the extracted folder itself
        root = root.parent

    def both(download: bool) -> list:
        return [cls(root=str(root), train=t, download=download) for t in (True, False)]

    try:
        # Files already there: no network at all (download=True would still verify, then skip).
        train, test = both(download=False)
        source = str(root / cls.base_folder)
    except RuntimeError:  # "Dataset not found or corrupted": fetch it where the machine can
        try:
            train, test = both(download=True)
        except Exception as e:  # noqa: BLE001 - any download failure is the same to the user
            raise DataError(
                f"{cfg.dataset}: {cls.base_folder} not found (or corrupted) in {root} and the "
                f"download failed ({type(e).__name__}); pass --data-dir with the extracted "
                f"{cls.base_folder} folder or {cls.filename}"
            ) from None
        source = "torchvision"

    def nchw(data) -> torch.Tensor:  # torchvision keeps (N, H, W, C) uint8 numpy
        return torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()

    return Dataset(
        name=cfg.dataset,
        x_train=nchw(train.data),
        y_train=torch.tensor(train.targets, dtype=torch.int64),
        x_test=nchw(test.data),
        y_test=torch.tensor(test.targets, dtype=torch.int64),
        classes=list(train.classes),
        info={"source": source},
    )


@register("cifar10")
def cifar10(cfg: DataConfig) -> Dataset:
    return _load_cifar(cfg, "CIFAR10")


@register("cifar100")
def cifar100(cfg: DataConfig) -> Dataset:
    return _load_cifar(cfg, "CIFAR100")


def _synthetic(cfg: DataConfig, channels: int, default_size: int) -> Dataset:
    """A tiny learnable dataset made in memory (class = brightest quadrant); for tests and smoke runs."""
    g = torch.Generator().manual_seed(1234)
    size = cfg.image_size or default_size
    n_train, n_test, k = 512, 128, 4

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, k, (n,), generator=g)
        x = torch.randint(0, 80, (n, channels, size, size), generator=g, dtype=torch.uint8)
        h = size // 2
        for q in range(k):
            r, c = divmod(q, 2)
            sel = y == q
            x[sel, :, r * h : (r + 1) * h, c * h : (c + 1) * h] += 120
        return x, y

    x_tr, y_tr = make(n_train)
    x_te, y_te = make(n_test)
    return Dataset(cfg.dataset, x_tr, y_tr, x_te, y_te, [f"q{i}" for i in range(k)])


@register("synthetic")
def synthetic(cfg: DataConfig) -> Dataset:
    return _synthetic(cfg, channels=1, default_size=16)


@register("synthetic_rgb")
def synthetic_rgb(cfg: DataConfig) -> Dataset:
    """CIFAR-shaped (3 x 32 x 32) stand-in for smoke runs of the CIFAR studies."""
    return _synthetic(cfg, channels=3, default_size=32)
