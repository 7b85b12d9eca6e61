"""cnnopt/proxy.py: `cnnopt storage proxy` with TLS and a token, as a real process in front of a
real PostgreSQL. Clients without the token, with a wrong one, or in plaintext against TLS are
refused with one line and write nothing; a TLS + token client runs a study; a proxy on a
non-loopback address without both is refused before it opens the database."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import grpc
import optuna
import pytest
import sqlalchemy

from cnnopt.errors import StorageError
from cnnopt.proxy import (
    CA_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    check_exposure,
    is_loopback,
    write_proxy_certs,
)
from cnnopt.storage import get_storage

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
CLIENT_ENV = (CA_ENV, TOKEN_ENV, TOKEN_FILE_ENV)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env = {**base, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cnnopt.cli", *args], env=env, capture_output=True, text=True, **kw
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A CA, a certificate for localhost and 127.0.0.1, its key and a token (cryptography)."""
    return write_proxy_certs(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])


@pytest.fixture
def client_env(monkeypatch):
    """Set the client's variables for the test; none leak in from the environment."""
    for k in CLIENT_ENV:
        monkeypatch.delenv(k, raising=False)

    def set_env(**values: str) -> None:
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))

    return set_env


class SecureProxy:
    """`cnnopt storage proxy --tls-cert --tls-key --token-file` as a real process."""

    def __init__(self, db_url: str, certs: dict[str, Path], tmp: Path):
        self.db_url = db_url
        self.port = free_port()
        self.log = tmp / "proxy.log"
        cmd = [
            sys.executable, "-m", "cnnopt.cli", "storage", "proxy", "--storage", db_url,
            "--port", str(self.port), "--pool-size", "2",
            "--tls-cert", str(certs["proxy.pem"]), "--tls-key", str(certs["proxy.key"]),
            "--token-file", str(certs["token"]),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        end = time.time() + 60
        while time.time() < end:  # TCP only: the port opens once the server has started
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail("the proxy did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def written(self) -> tuple[int, int]:
        """(studies, trials) in the database behind the proxy."""
        engine = sqlalchemy.create_engine(self.db_url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            counts = tuple(
                conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("studies", "trials")
            )
        engine.dispose()
        return counts


@pytest.fixture
def proxy(postgres_url, certs, tmp_path):
    p = SecureProxy(postgres_url, certs, tmp_path)
    yield p
    p.stop()


def _use_study(url: str) -> None:
    storage = get_storage(url, heartbeat=False)
    study = optuna.create_study(storage=storage, study_name="intruder")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "case, env, scheme, message",
    [
        ("no token", {CA_ENV: "ca.pem"}, "grpcs", r"refused this client \(no token\)"),
        (
            "wrong token",
            {CA_ENV: "ca.pem", TOKEN_ENV: "not-the-token"},
            "grpcs",
            r"refused this client \(a wrong token\)",
        ),
        (
            "plaintext client",
            {TOKEN_FILE_ENV: "token"},
            "grpc",
            r"does not speak plaintext gRPC \(a TLS proxy: grpcs://",
        ),
    ],
)
def test_refused_clients_get_one_line_and_write_nothing(
    proxy, certs, client_env, case, env, scheme, message
):
    client_env(**{k: certs.get(v, v) for k, v in env.items()})
    url = f"{scheme}://127.0.0.1:{proxy.port}"
    with pytest.raises(StorageError, match=message) as e:
        _use_study(url)
    assert "\n" not in str(e.value) and url in str(e.value)
    assert "not-the-token" not in str(e.value)
    assert proxy.written() == (0, 0)


@pytest.mark.postgres
def test_every_call_is_checked_not_only_the_first(proxy, certs):
    """A raw gRPC client that skips cnnopt's connection check: the interceptor stops each call
    (here the writes) before Optuna's servicer; nothing reaches the database."""
    from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc

    creds = grpc.ssl_channel_credentials(certs["ca.pem"].read_bytes())
    with grpc.secure_channel(f"localhost:{proxy.port}", creds) as channel:
        stub = api_pb2_grpc.StorageServiceStub(channel)
        request = api_pb2.CreateNewStudyRequest(directions=[api_pb2.MINIMIZE], study_name="x")
        for metadata in ([], [("authorization", "Bearer guess")], [("authorization", "")]):
            with pytest.raises(grpc.RpcError) as e:
                stub.CreateNewStudy(request, metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert proxy.written() == (0, 0)
    assert "refused a call from" in proxy.log.read_text()


@pytest.mark.postgres
def test_tls_and_token_client_runs_a_study(proxy, certs, client_env):
    """grpcs:// with the CA and the token file: a study and its trials land in the database;
    the token appears in no log line."""
    client_env(**{CA_ENV: certs["ca.pem"], TOKEN_FILE_ENV: certs["token"]})
    for host in ("127.0.0.1", "localhost"):  # both names are in the certificate
        storage = get_storage(f"grpcs://{host}:{proxy.port}", heartbeat=False)
        study = optuna.create_study(storage=storage, study_name="ok", load_if_exists=True)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert proxy.written() == (1, 4)
    token = certs["token"].read_text().strip()
    log = proxy.log.read_text()
    assert "grpcs://127.0.0.1" in log and "token required" in log and token not in log


@pytest.mark.postgres
def test_cli_refusal_is_one_line(proxy, certs):
    """`cnnopt status` through the proxy with a wrong token: exit 2, one line, no traceback,
    and the token it sent is not echoed."""
    r = cli(
        "status", "--storage", f"grpcs://127.0.0.1:{proxy.port}",
        env={CA_ENV: str(certs["ca.pem"]), TOKEN_ENV: "s3cret-guess"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused this client (a wrong token)" in lines[0], r.stderr
    assert "s3cret-guess" not in r.stdout + r.stderr


def test_exposure_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.3.0.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("proxy") and not is_loopback("10.0.0.5")
    check_exposure("127.0.0.1", 1, tls=False, token=False, insecure=False)
    check_exposure("0.0.0.0", 1, tls=True, token=True, insecure=False)
    check_exposure("0.0.0.0", 1, tls=False, token=False, insecure=True)
    with pytest.raises(StorageError, match=r"without a token \(CNNOPT_PROXY_TOKEN"):
        check_exposure("0.0.0.0", 1, tls=True, token=False, insecure=False)
    with pytest.raises(StorageError, match=r"without TLS \(--tls-cert/--tls-key\)$|--insecure"):
        check_exposure("10.0.0.5", 1, tls=False, token=True, insecure=False)


def test_cli_refuses_an_open_address_before_touching_the_database(certs):
    """No database listens at the URL: the refusal comes first, in one line."""
    db = "postgresql+psycopg2://u:pw@127.0.0.1:1/none"
    r = cli("storage", "proxy", "--host", "0.0.0.0", "--port", str(free_port()), "--storage", db)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0" in lines[0], r.stderr
    assert "TLS (--tls-cert/--tls-key) and a token" in lines[0]
    r = cli(
        "storage", "proxy", "--host", "0.0.0.0", "--storage", db,
        "--tls-cert", str(certs["proxy.pem"]), "--tls-key", str(certs["proxy.key"]),
    )  # fmt: skip
    assert r.returncode == 2 and "without a token" in r.stderr, r.stderr
    r = cli("storage", "proxy", "--storage", db, "--tls-cert", str(certs["proxy.pem"]))
    assert r.returncode == 2 and "needs both --tls-cert and --tls-key" in r.stderr, r.stderr
    r = cli("storage", "proxy", "--storage", db, "--token-file", str(certs["ca.pem"]) + ".missing")
    assert r.returncode == 2 and "proxy token file" in r.stderr and "ca.pem.missing" in r.stderr


def test_proxy_certs_command(tmp_path):
    out = tmp_path / "certs"
    r = cli("storage", "proxy-certs", str(out), "--host", "proxy", "--host", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "proxy.key", "proxy.pem", "token"]
    token = (out / "token").read_text().strip()
    assert len(token) >= 32 and token not in r.stdout + r.stderr
    for secret in ("proxy.key", "token"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600
    assert "grpcs://proxy:13000" in r.stdout and "CNNOPT_PROXY_CA=" in r.stdout
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli("storage", "proxy-certs", str(out), "--host", "proxy").returncode == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # kept, not replaced


def test_token_sources(tmp_path, client_env):
    from cnnopt.proxy import read_token

    assert read_token() is None
    client_env(**{TOKEN_ENV: "  from-env\n"})
    assert read_token() == "from-env"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    client_env(**{TOKEN_FILE_ENV: f})
    assert read_token() == "from-file"  # the file wins over the variable
    assert read_token(f) == "from-file"
    f.write_text("\n")
    with pytest.raises(StorageError, match=r"proxy token file .*token: empty"):
        read_token(f)
    f.write_text("tök en")
    with pytest.raises(StorageError, match="printable ASCII") as e:
        read_token(f)
    assert "tök" not in str(e.value)


def test_a_restarting_proxy_is_waited_for_not_taken_for_a_tls_mismatch(monkeypatch):
    """The connection is refused while the proxy restarts and its port opens a moment later: the
    client waits for it (a runner restarted beside a restarting proxy once stopped here with
    'the proxy does not speak plaintext gRPC')."""
    import grpc

    from cnnopt import proxy

    class Refused(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "failed to connect to all addresses; last error: Connection refused"

    class NotFound(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.NOT_FOUND

        def details(self):
            return "no such study"

    answers = [Refused(), Refused(), NotFound()]

    class Stub:
        def GetStudyIdFromName(self, request, timeout):  # noqa: N802 - gRPC's name
            raise answers.pop(0)

    class Client:
        url, _host, _port, _tls, _stub = "grpc://127.0.0.1:1", "127.0.0.1", 1, False, Stub()

    monkeypatch.setattr(proxy, "_port_open", lambda host, port: True)  # reopened meanwhile
    proxy.check_client(Client(), wait=30)
    assert answers == []
