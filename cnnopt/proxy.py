"""`cnnopt storage proxy`: Optuna's gRPC storage servicer in front of a database, behind TLS and
a shared token.

Optuna's own ``run_grpc_proxy_server`` listens in plaintext and asks nobody who they are, so
anyone who reaches its port can read and rewrite every study. This module builds the same
server (``optuna.storages._grpc.server.make_server``: a ``grpc.server`` with Optuna's
``OptunaStorageProxyService``) with two additions:

- TLS (``tls_cert``/``tls_key``, PEM files): clients connect with ``grpcs://HOST:PORT`` and
  check the proxy's certificate against the CA file in ``CNNOPT_PROXY_CA`` (or the system's
  roots when that is unset).
- A shared token, checked by a server interceptor on *every* call before Optuna's servicer sees
  it: the client sends it as the call metadata ``authorization: Bearer <token>``. A call without
  it, or with another, ends with UNAUTHENTICATED and touches nothing.

A proxy that listens on anything but a loopback address must have both, unless the operator
says ``insecure=True`` (``--insecure``): a token sent in plaintext can be read off the wire, and
TLS without a token lets anyone in.

The token comes from a file (``--token-file``, env ``CNNOPT_PROXY_TOKEN_FILE``) or from
``CNNOPT_PROXY_TOKEN``; it is never logged or printed, only compared (in constant time).
``write_proxy_certs`` makes a private CA, a server certificate signed by it and a random token,
for a compose file or a cluster that has none of its own.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.storages import BaseStorage, RDBStorage

from cnnopt.errors import StorageError
from cnnopt.storage import (
    PROXY_POOL_SIZE,
    PROXY_PORT,
    PROXY_THREADS_PER_CONNECTION,
    RETRY_SECONDS,
    is_file_storage,
    is_proxy_storage,
    mask_url,
    open_rdb,
)

log = logging.getLogger("cnnopt.proxy")

TOKEN_ENV = "CNNOPT_PROXY_TOKEN"
TOKEN_FILE_ENV = "CNNOPT_PROXY_TOKEN_FILE"
CA_ENV = "CNNOPT_PROXY_CA"
# The metadata key gRPC clients conventionally send credentials under (keys are lower case).
TOKEN_METADATA_KEY = "authorization"


def read_token(token_file: str | Path | None = None) -> str | None:
    """The proxy token: from ``token_file``, else the file in ``CNNOPT_PROXY_TOKEN_FILE``, else
    ``CNNOPT_PROXY_TOKEN``; None when none is set. Surrounding whitespace (a file's newline) is
    not part of it. The errors name the file, never the token."""
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise StorageError(
                f"proxy token file {path}: {getattr(e, 'strerror', None) or e}"
            ) from None
        source = f"proxy token file {path}"
        if not token:
            raise StorageError(f"{source}: empty")
    else:
        token, source = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
        if not token:
            return None
    # it travels as gRPC metadata, which takes printable ASCII only
    if not (token.isascii() and token.isprintable()):
        raise StorageError(f"{source}: the token must be printable ASCII (not shown)")
    return token


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise StorageError(f"proxy {what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise StorageError(f"proxy {what} {path}: not a PEM file")
    return data


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``; any other name may resolve to a reachable address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _token_interceptor(token: str) -> Any:
    """A server interceptor that lets a call through only with ``authorization: Bearer token``;
    any other call ends UNAUTHENTICATED before Optuna's servicer (and the database) sees it."""
    import grpc

    expected = f"Bearer {token}".encode()

    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        log.warning(
            "storage proxy: refused a call from %s (missing or wrong token)", context.peer()
        )
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong proxy token")

    denied = grpc.unary_unary_rpc_method_handler(deny)

    class TokenInterceptor(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Callable, details: Any) -> Any:
            sent = dict(details.invocation_metadata or ()).get(TOKEN_METADATA_KEY, "")
            if hmac.compare_digest(sent.encode(), expected):
                return continuation(details)
            return denied  # every Optuna storage call is unary-unary

    return TokenInterceptor()


def check_exposure(host: str, port: int, *, tls: bool, token: bool, insecure: bool) -> None:
    """Refuse (one line) a non-loopback address without TLS and token, unless ``insecure``."""
    if is_loopback(host) or (tls and token) or insecure:
        return
    missing = [m for m, ok in (("TLS (--tls-cert/--tls-key)", tls), (f"a token ({TOKEN_ENV} or --token-file)", token)) if not ok]  # fmt: skip
    raise StorageError(
        f"storage proxy: refusing to listen on {host}:{port} without {' and '.join(missing)}: "
        "anyone who reaches the port could read and rewrite every study (--insecure to do it anyway)"
    )


def server_credentials(tls_cert: str | Path | None, tls_key: str | Path | None) -> Any:
    """gRPC server credentials from the PEM pair, or None for plaintext."""
    if (tls_cert is None) != (tls_key is None):
        raise StorageError("storage proxy: TLS needs both --tls-cert and --tls-key")
    if tls_cert is None:
        return None
    import grpc

    cert = _read_pem(tls_cert, "TLS certificate")
    key = _read_pem(tls_key, "TLS key")
    return grpc.ssl_server_credentials([(key, cert)])


def make_server(
    storage: BaseStorage,
    host: str,
    port: int,
    *,
    threads: int = 10,
    credentials: Any = None,
    token: str | None = None,
) -> Any:
    """Optuna's ``make_server`` with TLS (``credentials`` from ``server_credentials``) and the
    token check; the server is bound, not started."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    interceptors = [_token_interceptor(token)] if token else []
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), interceptors=interceptors)
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    address = f"{host}:{port}"
    try:
        if credentials is not None:
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as e:  # gRPC: "Failed to bind to address"
        raise StorageError(f"storage proxy: cannot listen on {address}: {e}") from None
    return server


# -- the client side (RetryingGrpcStorageProxy in cnnopt.storage.proxy_client uses these) ------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def client_channel(host: str, port: int, tls: bool, options: list) -> Any:
    """A gRPC channel to the proxy: TLS (checked against ``CNNOPT_PROXY_CA``, else the system's
    roots) when ``tls``, and the token from the environment (``read_token``) on every call."""
    import grpc

    target = f"{host}:{port}"
    if tls:
        ca = os.environ.get(CA_ENV)
        roots = _read_pem(ca, f"CA file ({CA_ENV})") if ca else None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options)
    else:
        channel = grpc.insecure_channel(target, options)
    token = read_token()
    if token is None:
        return channel
    header = (TOKEN_METADATA_KEY, f"Bearer {token}")

    class TokenInterceptor(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
            metadata = [*(details.metadata or ()), header]
            return continuation(_CallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression), request)  # fmt: skip

    return grpc.intercept_channel(channel, TokenInterceptor())


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def check_client(storage: Any, wait: float) -> None:
    """Wait up to ``wait`` s for the proxy behind ``storage`` (a RetryingGrpcStorageProxy) to
    answer one harmless authenticated call, and turn every way it can refuse this client into one
    line (StorageError): no proxy listening, a missing or wrong token, plaintext against TLS or
    the reverse, a certificate the CA does not vouch for."""
    import time

    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2

    url, host, port = storage.url, storage._host, storage._port
    request = api_pb2.GetStudyIdFromNameRequest(study_name="cnnopt:connection-check")
    end = time.monotonic() + wait
    mismatches = 0
    while True:
        try:
            storage._stub.GetStudyIdFromName(request, timeout=10)
            return
        except grpc.RpcError as e:
            code, details = e.code(), " ".join(str(e.details()).split())
        if code == grpc.StatusCode.NOT_FOUND:  # answered: no such study, as expected
            return
        if code == grpc.StatusCode.UNAUTHENTICATED:
            how = "a wrong token" if read_token() else "no token"
            raise StorageError(
                f"storage proxy {url} refused this client ({how}): set {TOKEN_ENV} or "
                f"{TOKEN_FILE_ENV} to the proxy's token"
            )
        # A proxy that is restarting refuses the connection, then opens its port: only a failure
        # that is not a refusal and repeats while the port is open is a TLS/plaintext mismatch.
        refused = "connection refused" in details.lower()
        if code == grpc.StatusCode.UNAVAILABLE and not refused and _port_open(host, port):
            mismatches += 1
        else:
            mismatches = 0
        if mismatches == 1:
            time.sleep(0.5)
            continue
        if mismatches >= 2:
            hint = (
                "TLS handshake failed (a plaintext proxy needs grpc://; the proxy's certificate "
                f"must be signed by the CA in {CA_ENV} and name {host})"
                if storage._tls
                else f"the proxy does not speak plaintext gRPC (a TLS proxy: grpcs:// and {CA_ENV})"
            )
            raise StorageError(f"storage proxy {url}: {hint}: {details}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if time.monotonic() < end:
                time.sleep(0.2)
                continue
            raise StorageError(
                f"cannot reach the storage proxy at {url} (start it with `cnnopt storage proxy "
                f"--storage DATABASE_URL --host {host} --port {port}`)"
            )
        raise StorageError(f"storage proxy {url}: {code.name}: {details}")


# -- the server side -----------------------------------------------------------------------------


def _proxy_cache(backend: RDBStorage) -> BaseStorage:
    """Optuna's ``_CachedStorage`` (what ``optuna.storages.get_storage`` puts over an RDBStorage;
    finished trials are read once), made to serve trials it did not create.

    ``_CachedStorage.set_trial_param`` looks the trial up in what this process created or read,
    and raises KeyError otherwise. Behind a proxy that is restarted, the clients' running trials
    were created by the proxy that died: their params go to the database directly.

    ``_CachedStorage.create_new_study`` puts an empty record over the study's cached one; the
    trials it had cached then raise KeyError (GetTrial: NOT_FOUND, a dead worker). A creation
    repeated after a lost connection that finds the study reports success (``_RepeatSafe``), and
    every `cnnopt run` asks to create its study: one that starts while the database restarts
    did exactly that. An existing record is kept."""
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    class _ProxyCache(_CachedStorage):
        def create_new_study(self, directions, study_name=None):
            study_id = self._backend.create_new_study(directions=directions, study_name=study_name)
            with self._lock:
                if study_id not in self._studies:
                    study = _StudyInfo()
                    study.name = study_name
                    study.directions = list(directions)
                    self._studies[study_id] = study
            return study_id

        def set_trial_param(self, trial_id, param_name, param_value_internal, distribution):
            with self._lock:
                known = trial_id in self._trial_id_to_study_id_and_number
            if known:
                super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            else:
                self._backend.set_trial_param(
                    trial_id, param_name, param_value_internal, distribution
                )

    return _ProxyCache(backend)


def run_proxy(
    url: str,
    host: str = "127.0.0.1",
    port: int = PROXY_PORT,
    pool_size: int = PROXY_POOL_SIZE,
    on_ready: Callable[[], None] | None = None,
    *,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    token: str | None = None,
    insecure: bool = False,
) -> None:
    """Serve the database at ``url`` to ``grpc(s)://host:port`` clients (blocks until killed).

    Behind the proxy: Optuna's cache (``_proxy_cache``) over a RetryingRDBStorage whose pool
    of ``pool_size`` connections is all the database ever sees. A database restart is ridden out
    by its retries; the proxy's own restart by the clients' retries."""
    if is_file_storage(url) or is_proxy_storage(url) or url.startswith("sqlite"):
        raise StorageError(
            f"storage {mask_url(url)}: the storage proxy serves a database server "
            "(postgresql+psycopg2://... or mysql+pymysql://...)"
        )
    # the address, TLS files and token are checked before a minute of database retries
    check_exposure(host, port, tls=tls_cert is not None, token=bool(token), insecure=insecure)
    credentials = server_credentials(tls_cert, tls_key)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = _proxy_cache(open_rdb(url, connect_retry=RETRY_SECONDS, pool_size=pool_size))
    server = make_server(
        storage, host, port,
        threads=pool_size * PROXY_THREADS_PER_CONNECTION, credentials=credentials, token=token,
    )  # fmt: skip
    log.warning(
        "storage proxy for %s on %s://%s:%d (at most %d database connections; %s)",
        mask_url(url), "grpcs" if credentials else "grpc", host, port, pool_size,
        "token required" if token else "no token",
    )  # fmt: skip
    server.start()
    if on_ready is not None:
        on_ready()
    server.wait_for_termination()


def write_proxy_certs(out: str | Path, hosts: list[str], days: int = 825) -> dict[str, Path]:
    """A private CA, a server certificate for ``hosts`` (DNS names or IP addresses) signed by
    it, the server's key and a random token, written into ``out``: ``ca.pem`` (give it to the
    clients as ``CNNOPT_PROXY_CA``), ``proxy.pem`` + ``proxy.key`` (``--tls-cert/--tls-key``)
    and ``token`` (``--token-file`` and the clients' ``CNNOPT_PROXY_TOKEN_FILE``). The CA's key
    is never written: nothing else can be signed with it. Existing files are kept (a restarted
    compose stack keeps its certificates and token)."""
    import datetime

    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise StorageError(
            "proxy certificates need cryptography: pip install cryptography"
        ) from None

    out = Path(out)
    paths = {name: out / name for name in ("ca.pem", "proxy.pem", "proxy.key", "token")}
    if all(p.exists() for p in paths.values()):
        return paths
    if not hosts:
        raise StorageError("proxy certificates: give at least one --host the clients connect to")
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cnnopt proxy CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths["ca.pem"].write_bytes(ca.public_bytes(pem))
    paths["proxy.pem"].write_bytes(cert.public_bytes(pem))
    secret_files = {
        "proxy.key": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "token": (secrets.token_urlsafe(32) + "\n").encode(),
    }
    for name, data in secret_files.items():
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return paths
