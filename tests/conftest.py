"""Shared fixtures: small studies on the in-memory ``synthetic`` dataset, made through the Python
API (Study file -> open_study -> Objective) in this process, so every test file runs in seconds."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import optuna
import pytest
import torch

from cnnopt.objective import Objective
from cnnopt.runner import open_study
from cnnopt.study import Study

torch.set_num_threads(1)  # the CPU is shared; tiny models gain nothing from more threads
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDY_SOURCE = '''
"""Tiny test study: everything the report's figures look at is searched."""
name = "{name}"
dataset = "synthetic"
family = "cnn"
conv_blocks = 2
filters = [4, 8]
hidden = []
global_pool = True
epochs = {epochs}
pruner = "median"
n_startup_trials = 2
n_warmup_steps = 1
sampler = "random"


def space(trial):
    return {{
        "lr": trial.suggest_float("lr", 1e-3, 3e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64]),
        "batchnorm": trial.suggest_categorical("batchnorm", ["none", "before", "after"]),
        "activation": trial.suggest_categorical("activation", ["relu", "gelu"]),
    }}
'''


def make_study(
    folder: Path, name: str = "tiny", n_trials: int = 6, epochs: int = 3, source: str | None = None
) -> tuple[Study, str]:
    """Write a study file under ``folder``, run ``n_trials`` in-process; returns (Study, url)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source or STUDY_SOURCE.format(name=name, epochs=epochs)))
    study = Study.load(path)
    url = str(folder / "storage" / f"{name}.journal")
    ostudy = open_study(study, url)
    if n_trials:
        ostudy.optimize(Objective(study, "cpu"), n_trials=n_trials)
    return study, url


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> tuple[Study, str]:
    """Six trials (some pruned, all with history, FLOPs, params) of the tiny study."""
    return make_study(tmp_path_factory.mktemp("study"), "tiny", n_trials=6)
