"""Data: the registry of loaders, and the device-resident split every trial of a worker shares."""

from __future__ import annotations

from collections import OrderedDict

import torch

from cnnopt.config import DataConfig
from cnnopt.data.registry import dataset_key, load_dataset
from cnnopt.data.tensors import Dataset, Split, split

# Splits on the device, most recently used last. Small: a search over train_subset or
# val_fraction makes a new split for each value, and each one may hold the whole training set
# on the GPU; the trials of a worker mostly reuse the same one or two.
MAX_SPLITS = 2
_SPLITS: OrderedDict[tuple, Split] = OrderedDict()


def load_split(cfg: DataConfig, device: torch.device | str = "cpu") -> tuple[Dataset, Split]:
    """The dataset and its fixed train/validation split, on ``device``, built once per process.

    Trials of one worker differ in hyperparameters, never in data: the split is keyed by what
    its content depends on (the dataset's settings and the split's) and the device, so the second
    trial of a worker reads nothing from disk and copies nothing to the GPU. The ``MAX_SPLITS``
    most recently used splits are kept; the oldest is dropped *before* a new one is copied to
    the device, so at most ``MAX_SPLITS`` are there at any moment.
    """
    ds = load_dataset(cfg)
    key = (
        dataset_key(cfg),
        cfg.val_fraction,
        cfg.split_seed,
        cfg.train_subset,
        str(torch.device(device)),
    )
    if key in _SPLITS:
        _SPLITS.move_to_end(key)
        return ds, _SPLITS[key]
    host = split(ds, cfg.val_fraction, cfg.split_seed, cfg.train_subset)
    # Room first, then the copy: evicting after it would hold MAX_SPLITS + 1 splits on the GPU
    # at the peak, and an out-of-memory there would recur on every trial of this data key.
    _evict(MAX_SPLITS - 1, device)
    try:
        on_device = host.to(device)
    except RuntimeError as e:  # torch.OutOfMemoryError, or CUDA's "out of memory" error
        if "out of memory" not in str(e).lower():
            raise
        e.with_traceback(None)
        _evict(0, device)  # every other split of this worker goes, then one more try
        on_device = host.to(device)
    _SPLITS[key] = on_device
    return ds, on_device


def _evict(keep: int, device: torch.device | str) -> None:
    """Drop the least recently used splits until ``keep`` are left, and hand their device
    memory back to the driver (a split on the GPU is most of a worker's idle footprint)."""
    if len(_SPLITS) <= keep:
        return
    while len(_SPLITS) > keep:
        _SPLITS.popitem(last=False)
    if torch.device(device).type == "cuda":
        # the splits' tensors are freed once no loader holds them (a finished trial's loaders
        # are gone: see worker.release_memory); their blocks go back to the caching allocator
        torch.cuda.empty_cache()


__all__ = ["Dataset", "Split", "load_dataset", "load_split"]
