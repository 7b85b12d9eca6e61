"""Shared fixtures. Tests make their own tiny data; the few that need real FashionMNIST find it in
$CNNOPT_TEST_FASHION_DIR or ../shared/data/fashion-mnist and are skipped elsewhere."""

from __future__ import annotations

import os
import sys
import textwrap
import warnings
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def fashion_dir() -> Path | None:
    for cand in (
        os.environ.get("CNNOPT_TEST_FASHION_DIR"),
        ROOT.parent / "shared/data/fashion-mnist",
    ):
        if cand and (Path(cand) / "train-images-idx3-ubyte.gz").is_file():
            return Path(cand)
    return None


@pytest.fixture
def fashion():
    d = fashion_dir()
    if d is None:
        pytest.skip("real FashionMNIST files not found (set CNNOPT_TEST_FASHION_DIR)")
    return d


@pytest.fixture
def write_study(tmp_path):
    """Write a study file from a dedented source string; returns its path."""

    def write(source: str, name: str = "study.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


def cnnopt_cmd(*args: str) -> list[str]:
    """The CLI as a real subprocess, with this checkout's package."""
    return [sys.executable, "-m", "cnnopt.cli", *args]


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    # load_dataset caches per process; tests write different files under the same tmp names.
    from cnnopt.data import registry

    registry._CACHE.clear()
    yield
    registry._CACHE.clear()
