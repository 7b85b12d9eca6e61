"""Shared fixtures. ``postgres_url``: a fresh, empty PostgreSQL database for one test.

Where the server comes from, first that works:
1. ``CNNOPT_TEST_POSTGRES_URL`` (a database is created next to it per test when its user may;
   otherwise that database itself is used);
2. a server on 127.0.0.1:5432, user ``postgres`` (trust auth; this project's CI);
3. a throw-away server from the machine's initdb/pg_ctl, started by pytest-postgresql's
   ``postgresql_proc`` factory (not possible as root: initdb refuses);
else the test is skipped with the reason -- or fails, when ``CNNOPT_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

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
    import psycopg2

    u = make_url(url)
    return psycopg2.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        dbname=u.database or "postgres",
        connect_timeout=timeout,
        **{k: v for k, v in u.query.items() if isinstance(v, str)},
    )


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
    name = f"cnnopt_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        conn = _connect(server_url)
    except Exception as e:  # noqa: BLE001
        _no_postgres(str(e))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    except Exception:  # noqa: BLE001 - no CREATEDB right: share the given database
        return server_url, None
    finally:
        conn.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False), name


def drop_database(server_url: str, name: str) -> None:
    conn = _connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    url, name = create_database(postgres_server)
    yield url
    if name:
        drop_database(postgres_server, name)
