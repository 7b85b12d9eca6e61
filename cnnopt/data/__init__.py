"""Data: the registry of loaders, and the device-resident split every trial of a worker shares."""

from __future__ import annotations

import torch

from cnnopt.config import DataConfig
from cnnopt.data.registry import load_dataset
from cnnopt.data.tensors import Dataset, Split, split

_SPLITS: dict[tuple, Split] = {}


def load_split(cfg: DataConfig, device: torch.device | str = "cpu") -> tuple[Dataset, Split]:
    """The dataset and its fixed train/validation split, on ``device``, built once per process.

    Trials of one worker differ in hyperparameters, never in data: the split is keyed by the data
    settings and the device only, so the second trial of a worker reads nothing from disk and
    copies nothing to the GPU.
    """
    ds = load_dataset(cfg)
    key = (id(ds), cfg.val_fraction, cfg.split_seed, cfg.train_subset, str(device))
    if key not in _SPLITS:
        _SPLITS[key] = split(ds, cfg.val_fraction, cfg.split_seed, cfg.train_subset).to(device)
    return ds, _SPLITS[key]


__all__ = ["Dataset", "Split", "load_dataset", "load_split"]
