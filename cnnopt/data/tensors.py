"""Device-resident datasets, in the manner of airbench's CifarLoader.

A dataset that fits in memory is one uint8 tensor [N, C, H, W] plus a label tensor, moved to the
device once per worker process. Batches are slices of a random permutation drawn on the device;
normalisation and augmentation run on the whole batch there. No per-sample Python, no DataLoader
workers, no host-to-device copy per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class Dataset:
    """A loaded dataset, on the CPU, as loaders return it (registry.load_dataset)."""

    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N], or float32 [N, K] (multi-hot) when multilabel
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    classes: list[str]
    multilabel: bool = False
    info: dict = field(default_factory=dict)  # loader notes: dropped rows, source files, ...

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
    """Train / validation tensors of one fixed, seeded split, plus normalisation statistics."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: torch.Tensor  # [C], of the training part, in [0, 1] units
    std: torch.Tensor

    def to(self, device: torch.device | str) -> Split:
        d = torch.device(device)
        # pinned memory makes the one host->device copy asynchronous and faster on CUDA
        pin = d.type == "cuda"
        return Split(
            *(_move(t, d, pin) for t in (self.x_train, self.y_train, self.x_val, self.y_val)),
            self.mean.to(d),
            self.std.to(d),
        )


def _move(t: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    if t.device == device:
        return t
    if pin and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=pin)


def channel_stats(x: torch.Tensor, max_images: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (in [0, 1] units) of a uint8 image tensor, on a fixed subsample."""
    sample = x[:max_images].float().div_(255)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean, std


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
    x_tr, y_tr = ds.x_train[train_idx], ds.y_train[train_idx]
    mean, std = channel_stats(x_tr)
    return Split(x_tr, y_tr, ds.x_train[val_idx], ds.y_train[val_idx], mean, std)


Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DeviceLoader:
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
        self.x, self.y = x, y
        self.mean = mean.view(1, -1, 1, 1)
        self.std = std.view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.channels_last = channels_last
        self.image_size = image_size
        self.generator = torch.Generator(device=x.device).manual_seed(seed)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def n_images(self) -> int:
        return int(self.x.shape[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, device=self.x.device, generator=self.generator)
        else:
            order = None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            xb = self.x[idx].float().div_(255)
            if self.image_size is not None and xb.shape[-1] != self.image_size:
                xb = torch.nn.functional.interpolate(
                    xb, size=(self.image_size, self.image_size), mode="bilinear", antialias=False
                )
            yb = self.y[idx]
            if self.augment is not None:
                xb, yb = self.augment(xb, yb)
            xb = (xb - self.mean) / self.std
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb
