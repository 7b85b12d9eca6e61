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
    most recently used splits are kept; older ones are dropped (their memory goes back after the
    trial, see ``runner.release_memory``).
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
    else:
        _SPLITS[key] = split(ds, cfg.val_fraction, cfg.split_seed, cfg.train_subset).to(device)
        while len(_SPLITS) > MAX_SPLITS:
            _SPLITS.popitem(last=False)
    return ds, _SPLITS[key]


__all__ = ["Dataset", "Split", "load_dataset", "load_split"]
