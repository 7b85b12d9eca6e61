"""Search-space helpers shared by study files.

Each helper samples a few related parameters from an Optuna trial and returns flat config keys,
so a study file's ``space(trial)`` reads like the table of a report. Parameter names are stable:
``Study.config_from_params`` replays ``space()`` on a stored trial's params, so renaming a parameter
here would orphan old studies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnnopt.config import CHOICES

ALL_OPTIMIZERS = CHOICES["optimizer"]
ALL_ACTIVATIONS = CHOICES["activation"]


def optimizer(
    trial,
    choices: Sequence[str] = ALL_OPTIMIZERS,
    lr: tuple[float, float] = (1e-5, 1e-1),
    weight_decay: tuple[float, float] | None = None,
    l1: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Optimizer, log-uniform learning rate and (optionally) L2 / L1 penalties."""
    out: dict[str, Any] = {
        "optimizer": trial.suggest_categorical("optimizer", list(choices)),
        "lr": trial.suggest_float("lr", *lr, log=True),
    }
    if weight_decay is not None:
        out["weight_decay"] = trial.suggest_float("weight_decay", *weight_decay, log=True)
    if l1 is not None:
        out["l1"] = trial.suggest_float("l1", *l1, log=True)
    return out


def regularization(
    trial, kinds: Sequence[str] = ("none", "l2", "l1", "l1_l2"), strength=(1e-6, 1e-2)
) -> dict[str, Any]:
    """R3's weight-decay study: which penalty, and how strong (one log-uniform size for both)."""
    kind = trial.suggest_categorical("penalty", list(kinds))
    if kind == "none":
        return {"weight_decay": 0.0, "l1": 0.0}
    size = trial.suggest_float("penalty_size", *strength, log=True)
    return {
        "weight_decay": size if "l2" in kind else 0.0,
        "l1": size if kind.startswith("l1") else 0.0,
    }


def conv_blocks(
    trial,
    blocks: tuple[int, int] = (2, 3),
    base_filters: Sequence[int] = (16, 32, 64),
    kernel_sizes: Sequence[int] = (3, 5),
    convs_per_block: Sequence[int] = (1, 2),
) -> dict[str, Any]:
    """Number of blocks, filters doubling per block from a sampled base, kernel, convs per block."""
    n = trial.suggest_int("conv_blocks", *blocks)
    base = trial.suggest_categorical("base_filters", list(base_filters))
    return {
        "conv_blocks": n,
        "filters": [base * 2**i for i in range(n)],
        "kernel_size": trial.suggest_categorical("kernel_size", list(kernel_sizes)),
        "convs_per_block": trial.suggest_categorical("convs_per_block", list(convs_per_block)),
    }


def dropout(trial, n_blocks: int, high: float = 0.5) -> dict[str, Any]:
    """Constant dropout after every block, or increasing per block (R3: 0.2/0.5/0.7 did best)."""
    kind = trial.suggest_categorical("dropout_schedule", ["constant", "increasing"])
    p = trial.suggest_float("dropout", 0.0, high)
    if kind == "constant" or n_blocks == 1:
        return {"dropout": p}
    top = min(0.8, p + trial.suggest_float("dropout_step", 0.05, 0.3) * (n_blocks - 1))
    return {"dropout": [p + (top - p) * i / (n_blocks - 1) for i in range(n_blocks)]}


def layers(
    trial,
    batchnorm: Sequence[str] = CHOICES["batchnorm"],
    activations: Sequence[str] = ALL_ACTIVATIONS,
    inits: Sequence[str] = ("default", "he", "glorot"),
) -> dict[str, Any]:
    """BatchNorm placement, activation and weight init (R3's ablations, as one search)."""
    return {
        "batchnorm": trial.suggest_categorical("batchnorm", list(batchnorm)),
        "activation": trial.suggest_categorical("activation", list(activations)),
        "init": trial.suggest_categorical("init", list(inits)),
    }
