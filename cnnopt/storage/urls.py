"""What a storage URL means, and the connection settings each kind of storage gets.

Apart from the storage classes because most of cnnopt only names, shows or classifies a storage
(the CLI, status, the dashboard, reports, the proxy): which URL a study uses, whether it is a
file, a database or the proxy, and how to print it without its password (``mask_url``). Nothing
here opens a connection or imports a database driver.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cnnopt.errors import StorageError

STORAGE_DIR = Path("storage")
# Heartbeats run in a thread beside training, so a long CPU epoch never delays them; the grace
# period only has to cover a stalled database connection (optuna#4234, #5470: too short fails live
# trials) -- and a database restart, which the retries (``cnnopt.storage.retry``) ride out.
HEARTBEAT_INTERVAL = 30
GRACE_PERIOD = 180
# Per process: the main thread and the heartbeat thread each hold at most one connection.
POOL_SIZE = 2
POOL_RECYCLE = 300
# The storage proxy: its database pool is the study's whole connection budget; gRPC threads beyond
# it wait for a free connection (``pool_timeout``) instead of opening more.
PROXY_PORT = 13000
PROXY_POOL_SIZE = 8
PROXY_THREADS_PER_CONNECTION = 2


def max_connections(n_workers: int) -> int:
    """The most connections one ``cnnopt run --workers n_workers`` opens (workers + runner)."""
    return POOL_SIZE * (n_workers + 1)


def default_url(study_name: str) -> str:
    return str(STORAGE_DIR / f"{study_name}.journal")


def resolve_url(url: str | None, study_name: str) -> str:
    return url or os.environ.get("CNNOPT_STORAGE") or default_url(study_name)


def is_file_storage(url: str) -> bool:
    return url.startswith("journal://") or "://" not in url


def is_proxy_storage(url: str) -> bool:
    return url.startswith(("grpc://", "grpcs://"))


def mask_url(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (also inside messages,
    and ``password=...`` query or DSN parameters)."""
    url = re.sub(r"(://[^:/@\s]+:)[^@\s]*(@)", r"\1***\2", url)
    return re.sub(r"(password=)[^&\s]+", r"\1***", url, flags=re.IGNORECASE)


def engine_kwargs(url: str, pool_size: int = POOL_SIZE) -> dict:
    if url.startswith("sqlite"):
        return {}
    return {
        "pool_size": pool_size,
        "max_overflow": 0,
        # PostgreSQL and proxies drop idle connections (optuna#5600); Optuna sets this only for MySQL.
        "pool_pre_ping": True,
        "pool_recycle": POOL_RECYCLE,
        "pool_timeout": 60,
    }


def parse_proxy_url(url: str) -> tuple[str, int]:
    """grpc(s)://host:port -> (host, port); the port defaults to PROXY_PORT."""
    found = re.fullmatch(r"grpcs?://([^:/\s]+)(?::(\d+))?/?", url)
    if not found:
        raise StorageError(
            f"storage {mask_url(url)}: expected grpc://HOST:PORT or grpcs://HOST:PORT"
        )
    return found.group(1), int(found.group(2) or PROXY_PORT)
