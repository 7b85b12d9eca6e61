"""Shared fixtures. Tests make their own tiny data; the few that need real FashionMNIST find it in
$CNNOPT_TEST_FASHION_DIR or ../shared/data/fashion-mnist and are skipped elsewhere (they fail
instead under CNNOPT_REQUIRE_FASHION=1, as tests needing PostgreSQL do under
CNNOPT_REQUIRE_POSTGRES=1)."""

from __future__ import annotations

import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from sqlalchemy.engine import make_url

from cnnopt.objective import Objective
from cnnopt.runner import open_study
from cnnopt.study import Study

ROOT = Path(__file__).resolve().parents[1]
# `cnnopt` processes that tests start from the repository must not leave trial artifacts in its
# storage/ folder: off unless a test passes --artifacts (tests/test_artifacts.py does).
os.environ.setdefault("CNNOPT_ARTIFACTS", "none")
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


def require_fashion() -> Path:
    """The real FashionMNIST folder; a skip without it, a failure under CNNOPT_REQUIRE_FASHION=1
    (CI sets it when the data is there, so these tests cannot vanish silently)."""
    d = fashion_dir()
    if d is None:
        reason = "real FashionMNIST files not found (set CNNOPT_TEST_FASHION_DIR)"
        if os.environ.get("CNNOPT_REQUIRE_FASHION") == "1":
            pytest.fail(f"FashionMNIST required (CNNOPT_REQUIRE_FASHION=1): {reason}")
        pytest.skip(reason)
    return d


@pytest.fixture
def fashion():
    return require_fashion()


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


torch.set_num_threads(1)  # the CPU is shared; tiny models gain nothing from more threads

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
    study = Study.load(path, {"artifacts": str(folder / "artifacts")})  # not the repo's storage/
    url = str(folder / "storage" / f"{name}.journal")
    ostudy = open_study(study, url)
    if n_trials:
        ostudy.optimize(Objective(study, "cpu"), n_trials=n_trials)
    return study, url


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> tuple[Study, str]:
    """Six trials (some pruned, all with history, FLOPs, params) of the tiny study."""
    return make_study(tmp_path_factory.mktemp("study"), "tiny", n_trials=6)


# ---- PostgreSQL: a fresh, empty database per test (see postgres_server for where it comes from)

try:
    from pytest_postgresql import factories

    cnnopt_postgresql_proc = factories.postgresql_proc(port=None)
except ImportError:  # pragma: no cover
    factories = None


def _no_postgres(reason: str):
    if os.environ.get("CNNOPT_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL required (CNNOPT_REQUIRE_POSTGRES=1) but unavailable: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason}")


def _connect(url: str, timeout: int = 3):
    from cnnopt.pgserver import connect

    return connect(url, timeout)


def require_pg_ctl() -> None:
    """Skip (fail under CNNOPT_REQUIRE_POSTGRES=1) without the server binaries that tests use to
    start, stop and restart a throw-away PostgreSQL of their own."""
    from cnnopt.pgserver import find_bin_dir

    if find_bin_dir() is None:
        _no_postgres("no initdb/pg_ctl to start a throw-away PostgreSQL server")


@pytest.fixture
def pg_server():
    """A throw-away PostgreSQL server (cnnopt.pgserver) that the test may stop and restart."""
    import shutil
    import tempfile

    from cnnopt.pgserver import PgServer

    require_pg_ctl()
    # not under pytest's tmp_path: as root the server runs as `postgres`, who must reach it
    root = Path(tempfile.mkdtemp(prefix="cnnopt-pg-"))
    server = PgServer(root)
    try:
        server.up()
        yield server
    finally:
        server.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(request) -> str:
    """A SQLAlchemy URL of a PostgreSQL database whose user may create databases (or, from
    CNNOPT_TEST_POSTGRES_URL, any usable database)."""
    reasons = []
    env = os.environ.get("CNNOPT_TEST_POSTGRES_URL")
    candidates = [env] if env else []
    candidates.append("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    for url in candidates:
        try:
            _connect(url).close()
            return url
        except Exception as e:  # noqa: BLE001
            reasons.append(f"{make_url(url).render_as_string(hide_password=True)}: {e}".strip())
    if factories is None:
        _no_postgres("; ".join(reasons + ["pytest-postgresql is not installed"]))
    try:
        proc = request.getfixturevalue("cnnopt_postgresql_proc")
    except Exception as e:  # noqa: BLE001 - no binaries, or running as root
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _no_postgres("; ".join(reasons + [f"pytest-postgresql could not start one: {first}"]))
    pw = f":{proc.password}" if proc.password else ""
    return f"postgresql+psycopg2://{proc.user}{pw}@{proc.host}:{proc.port}/postgres"


def create_database(server_url: str) -> tuple[str, str | None]:
    """(url of a fresh database, its name to drop) -- or (server_url, None) if we may not."""
    from cnnopt import pgserver

    try:
        _connect(server_url).close()
    except Exception as e:  # noqa: BLE001
        _no_postgres(str(e))
    try:
        return pgserver.create_database(server_url, "cnnopt_test")
    except Exception:  # noqa: BLE001 - no CREATEDB right: share the given database
        return server_url, None


def drop_database(server_url: str, name: str) -> None:
    from cnnopt import pgserver

    pgserver.drop_database(server_url, name)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    url, name = create_database(postgres_server)
    yield url
    if name:
        drop_database(postgres_server, name)
