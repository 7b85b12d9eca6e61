"""Optuna's own storage test suite (``optuna.testing.pytest_storages.StorageTestCase``) against
what ``cnnopt.storage.get_storage`` returns: the direct PostgreSQL storage, and the ``grpc://``
client through a real ``cnnopt storage proxy`` in front of the same kind of database. Whatever
cnnopt adds (retries, creation tokens, trial owners, heartbeats) must leave them drop-in Optuna
storages: nothing of its bookkeeping shows in the trials a user reads."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.testing.pytest_storages import StorageTestCase

from cnnopt.storage import get_storage

from .conftest import create_database, drop_database
from .test_storage_proxy import Proxy

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

pytestmark = pytest.mark.postgres


def _empty(storage) -> None:
    """One database per module, emptied before each test (the suite counts the studies)."""
    for s in storage.get_all_studies():
        storage.delete_study(s._study_id)


@pytest.fixture(scope="module")
def database(postgres_server):
    url, name = create_database(postgres_server)
    yield url
    if name:
        drop_database(postgres_server, name)


@pytest.fixture(scope="module")
def direct_storage(database):
    storage = get_storage(database, heartbeat=False)
    yield storage
    storage.engine.dispose()


@pytest.fixture(scope="module")
def proxy_storage(database, tmp_path_factory):
    # a plain loopback proxy (the fixture is the one place to change for TLS and a token)
    proxy = Proxy(database, 4, tmp_path_factory.mktemp("proxy"))
    proxy.start()
    storage = get_storage(proxy.url, heartbeat=False, connect_retry=30)
    yield storage
    storage.close()
    proxy.stop()


class TestDirectPostgres(StorageTestCase):
    @pytest.fixture
    def storage(self, direct_storage):
        _empty(direct_storage)
        return direct_storage


class TestThroughTheProxy(StorageTestCase):
    @pytest.fixture
    def storage(self, proxy_storage):
        _empty(proxy_storage)
        return proxy_storage
