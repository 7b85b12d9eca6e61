"""Device-resident datasets, in the manner of airbench's CifarLoader, and streamed ones.

A dataset that fits in memory is one uint8 tensor [N, C, H, W] plus a label tensor, moved to the
device once per worker process. Batches are slices of a random permutation drawn on the device;
normalisation and augmentation run on the whole batch there. No per-sample Python, no DataLoader
workers, no host-to-device copy per batch (``DeviceLoader``).

An image folder too large for ``max_cache_gb`` holds its images as lazy ``ImageFiles`` instead
(see ``folders.py``); ``StreamLoader`` then decodes its batches with a torch DataLoader (worker
processes, pinned memory on CUDA, non-blocking copies). Labels still live on the device, and
both loaders turn a uint8 batch into a training batch with the same function, ``prepare_batch``,
so the two paths give the same batches for the same images and seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Dataset:
    """A loaded dataset, on the CPU, as loaders return it (registry.load_dataset)."""

    name: str
    x_train: torch.Tensor | Any  # uint8 [N, C, H, W], or lazy ImageFiles when streamed
    y_train: torch.Tensor  # int64 [N], or float32 [N, K] (multi-hot) when multilabel
    x_test: torch.Tensor | Any | None
    y_test: torch.Tensor | None
    classes: list[str]
    multilabel: bool = False
    info: dict = field(default_factory=dict)  # loader notes: dropped rows, source files, ...

    @property
    def streamed(self) -> bool:
        """True when the images are read from disk per batch (lazy ImageFiles), not cached."""
        return is_lazy(self.x_train)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Split:
    """Train / validation tensors of one fixed, seeded split, plus normalisation statistics.

    For a streamed dataset ``x_train``/``x_val`` are lazy ImageFiles: ``to`` moves the labels and
    statistics and leaves them on disk."""

    x_train: torch.Tensor | Any
    y_train: torch.Tensor
    x_val: torch.Tensor | Any
    y_val: torch.Tensor
    mean: torch.Tensor  # [C], of the training part, in [0, 1] units
    std: torch.Tensor

    def to(self, device: torch.device | str) -> Split:
        d = torch.device(device)
        return Split(
            *(_move(t, d) for t in (self.x_train, self.y_train, self.x_val, self.y_val)),
            self.mean.to(d),
            self.std.to(d),
        )


def is_lazy(x: Any) -> bool:
    """True for images that are decoded on access (folders.ImageFiles), not a tensor."""
    return x is not None and not isinstance(x, torch.Tensor)


def _move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One copy to the device, from pageable memory. Not pinned: ``pin_memory()`` of the whole
    split would be a page-locked copy of the dataset that torch's pinned-memory allocator keeps
    cached for the life of the worker (N workers, each holding one or two: page-locked memory
    the OS can neither swap nor reclaim, which invites the OOM-killer), to speed up a copy made
    once per worker. The per-batch copies of a streamed dataset stay pinned (the DataLoader
    pins one batch at a time)."""
    if is_lazy(t) or t.device == device:
        return t
    return t.to(device)


def channel_stats(x: torch.Tensor, max_images: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (in [0, 1] units) of a uint8 image tensor, on a fixed subsample."""
    sample = x[:max_images].float().div_(255)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean, std


STATS_SAMPLE = 2000  # images decoded for the mean/std of a streamed training set


def split(ds: Dataset, val_fraction: float, seed: int, subset: int | None = None) -> Split:
    """Fixed seeded train/validation split of the training set (the test set is never touched).

    ``subset`` first takes that many images (a seeded random choice), for quick runs.
    """
    n = ds.x_train.shape[0]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    if subset is not None and subset < n:
        order = order[:subset]
    n_val = int(round(len(order) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if ds.streamed:  # index the file list; statistics from a fixed random sample of images
        x_tr, x_val = ds.x_train.subset(train_idx), ds.x_train.subset(val_idx)
        sample = torch.randperm(len(x_tr), generator=g)[:STATS_SAMPLE]
        mean, std = channel_stats(x_tr[sample.sort().values])
    else:
        x_tr, x_val = ds.x_train[train_idx], ds.x_train[val_idx]
        mean, std = channel_stats(x_tr)
    return Split(x_tr, ds.y_train[train_idx], x_val, ds.y_train[val_idx], mean, std)


Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def prepare_batch(
    xb: torch.Tensor,
    yb: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    augment: Augment | None = None,
    image_size: int | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 batch (on the device) -> float in [0, 1] -> resize -> augment -> normalise ->
    memory format: the one per-batch step of both loaders. ``mean``/``std`` are [1, C, 1, 1]."""
    xb = xb.float().div_(255)
    if image_size is not None and xb.shape[-1] != image_size:
        xb = torch.nn.functional.interpolate(
            xb, size=(image_size, image_size), mode="bilinear", antialias=False
        )
    if augment is not None:
        xb, yb = augment(xb, yb)
    xb = (xb - mean) / std
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb, yb


class _Loader:
    """What both loaders share: the dataset, its statistics and the per-batch settings."""

    def __init__(
        self,
        x: Any,
        y: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        batch_size: int,
        drop_last: bool = False,
        augment: Augment | None = None,
        channels_last: bool = False,
        image_size: int | None = None,
    ):
        self.x, self.y = x, y
        self.device = y.device
        self.mean = mean.to(self.device).view(1, -1, 1, 1)
        self.std = std.to(self.device).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.augment = augment
        self.channels_last = channels_last
        self.image_size = image_size

    @property
    def n_images(self) -> int:
        return len(self.x)

    def _prepare(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return prepare_batch(
            xb, yb, self.mean, self.std, self.augment, self.image_size, self.channels_last
        )


class DeviceLoader(_Loader):
    """Batches of one tensor dataset that already lives on the device.

    Yields (x, y) with x float [B, C, H, W] normalised (and augmented when training), in the
    requested memory format. Shuffling uses a torch.Generator so runs are reproducible.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        channels_last: bool = False,
        image_size: int | None = None,
    ):
        super().__init__(x, y, mean, std, batch_size, drop_last, augment, channels_last, image_size)
        self.shuffle = shuffle
        self.generator = torch.Generator(device=x.device).manual_seed(seed)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, device=self.x.device, generator=self.generator)
        else:
            order = None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            yield self._prepare(self.x[idx], self.y[idx])


class _Images(torch.utils.data.Dataset):
    """One decoded uint8 image and its index (the labels stay on the device, in StreamLoader)."""

    def __init__(self, files: Any):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.files[i], i


class _Order(torch.utils.data.Sampler):
    """Indices in order, or one permutation per epoch drawn from ``generator``: the same draw as
    DeviceLoader's on the CPU, so a seed gives the same batches cached or streamed."""

    def __init__(self, n: int, generator: torch.Generator | None):
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.generator is None:
            return iter(range(self.n))
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


def default_workers() -> int:
    """DataLoader workers for streaming: half the usable cores, 1 to 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2))


class StreamLoader(_Loader):
    """Batches of lazy ImageFiles, decoded by a torch DataLoader; same interface as DeviceLoader.

    Worker processes (``num_workers``, kept alive between epochs) decode the images; on CUDA the
    batches are pinned and copied with ``non_blocking=True``. ``y`` lives on the device, and the
    device is taken from it. The shuffle order comes from ``generator`` (CPU, seeded), so a run
    is reproducible and can be re-seeded on resume, as with DeviceLoader.
    """

    def __init__(
        self,
        x: Any,
        y: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        channels_last: bool = False,
        image_size: int | None = None,
        num_workers: int | None = None,
    ):
        super().__init__(x, y, mean, std, batch_size, drop_last, augment, channels_last, image_size)
        self.generator = torch.Generator().manual_seed(seed)
        workers = default_workers() if num_workers is None else num_workers
        self.data = torch.utils.data.DataLoader(
            _Images(x),
            batch_size=batch_size,
            sampler=_Order(len(x), self.generator if shuffle else None),
            drop_last=drop_last,
            num_workers=workers,
            # the pin-memory thread works for the *current* device (at the first iteration):
            # train.fit makes the trial's device current before it builds the loaders
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, idx in self.data:
            xb = xb.to(self.device, non_blocking=True)
            yb = self.y[idx.to(self.device, non_blocking=True)]
            yield self._prepare(xb, yb)


def make_loader(
    x: Any,
    y: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int,
    num_workers: int | None = None,
    **kw: Any,
) -> DeviceLoader | StreamLoader:
    """A StreamLoader for lazy images, else a DeviceLoader (``x`` already on the device)."""
    if is_lazy(x):
        return StreamLoader(x, y, mean, std, batch_size, num_workers=num_workers, **kw)
    return DeviceLoader(x, y, mean, std, batch_size, **kw)
