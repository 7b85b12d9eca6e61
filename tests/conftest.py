"""Shared fixtures: every test works in a temporary folder and never touches the network."""

from __future__ import annotations

import pytest

from cnnopt.data import registry


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    # load_dataset caches per process; tests write different files under the same tmp names.
    registry._CACHE.clear()
    yield
    registry._CACHE.clear()
