"""`cnnopt storage up|url|down` with the machine's PostgreSQL binaries, and the message when
there are none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy

from cnnopt import pgserver
from cnnopt.errors import StorageError

from .conftest import require_pg_ctl

ROOT = Path(__file__).resolve().parents[1]


def cnnopt(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cnnopt.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.slow
def test_up_url_down_round_trip():
    require_pg_ctl()  # a skip, or a failure under CNNOPT_REQUIRE_POSTGRES=1
    # not under pytest's tmp_path: as root the server runs as `postgres`, who must reach it
    cwd = Path(tempfile.mkdtemp(prefix="cnnopt-storage-up-"))
    os.chmod(cwd, 0o755)
    try:
        up = cnnopt(cwd, "storage", "up")
        assert up.returncode == 0, up.stderr
        url = up.stdout.strip()
        assert url.startswith("postgresql+psycopg2://cnnopt@127.0.0.1:")
        assert "passfile=" in url  # the password stays in storage/postgres/pgpass
        password = (cwd / "storage/postgres/pgpass").read_text().strip().rsplit(":", 1)[1]
        assert password not in up.stdout + up.stderr
        assert oct((cwd / "storage/postgres/pgpass").stat().st_mode & 0o777) == "0o600"
        assert (cwd / "storage/postgres/server.json").exists()

        again = cnnopt(cwd, "storage", "up")  # already running: same URL
        assert again.returncode == 0 and again.stdout.strip() == url
        got = cnnopt(cwd, "storage", "url")
        assert got.returncode == 0 and got.stdout.strip() == url

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_database()")).scalar() == "cnnopt"
            addr = conn.execute(sqlalchemy.text("SELECT inet_server_addr()::text")).scalar()
            assert addr.startswith("127.0.0.1")
        engine.dispose()

        down = cnnopt(cwd, "storage", "down")
        assert down.returncode == 0 and "stopped" in down.stderr
        gone = cnnopt(cwd, "storage", "url")
        assert gone.returncode != 0
        assert "cnnopt storage up" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1
    finally:
        cnnopt(cwd, "storage", "down")
        shutil.rmtree(cwd, ignore_errors=True)


def test_no_binaries_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(pgserver, "find_bin_dir", lambda: None)
    with pytest.raises(StorageError) as e:
        pgserver.PgServer(tmp_path / "pg").up()
    msg = str(e.value)
    for hint in (
        "apt install postgresql",
        "postgresql-server",
        "brew install postgresql",
        "docker compose -f docker/compose.yaml up -d postgres",
    ):
        assert hint in msg


def test_url_when_not_running_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="cnnopt storage up"):
        pgserver.PgServer(tmp_path / "pg").url()


def test_free_port_skips_a_busy_one():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert not pgserver.port_is_free(busy)
        assert pgserver.free_port(busy) != busy


def test_missing_pg_ctl_fails_when_postgres_is_required(monkeypatch):
    """CI sets CNNOPT_REQUIRE_POSTGRES=1: the server tests must fail there, not skip."""
    monkeypatch.setattr(pgserver, "find_bin_dir", lambda: None)
    monkeypatch.setenv("CNNOPT_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="CNNOPT_REQUIRE_POSTGRES=1"):
        require_pg_ctl()
    monkeypatch.delenv("CNNOPT_REQUIRE_POSTGRES")
    with pytest.raises(pytest.skip.Exception, match="initdb/pg_ctl"):
        require_pg_ctl()
