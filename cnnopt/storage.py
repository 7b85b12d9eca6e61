"""get_storage: the one place that turns a storage URL into an Optuna storage.

- no URL: an Optuna JournalStorage file under ``storage/`` (safe for several processes on one
  machine; SQLite is not safe with parallel writers);
- ``*.journal`` path or ``journal:///path``: a JournalStorage file there;
- anything else with ``://``: an SQLAlchemy URL for RDBStorage (PostgreSQL, MySQL, SQLite), with
  engine settings for many workers and heartbeats so a dead worker's trial does not stay RUNNING.
Passwords never leave this module unmasked: use ``mask_url`` for anything printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

from cnnopt.errors import StorageError

STORAGE_DIR = Path("storage")
# Heartbeats run in a thread beside training, so a long CPU epoch never delays them; the grace
# period only has to cover a stalled database connection (optuna#4234, #5470: too short fails live
# trials).
HEARTBEAT_INTERVAL = 30
GRACE_PERIOD = 180
# Per process: the main thread and the heartbeat thread each hold at most one connection.
POOL_SIZE = 2


def default_url(study_name: str) -> str:
    return str(STORAGE_DIR / f"{study_name}.journal")


def resolve_url(url: str | None, study_name: str) -> str:
    return url or os.environ.get("CNNOPT_STORAGE") or default_url(study_name)


def is_file_storage(url: str) -> bool:
    return url.startswith("journal://") or "://" not in url


def mask_url(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    return re.sub(r"(://[^:/@]+:)[^@]*(@)", r"\1***\2", url)


def engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {}
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        # PostgreSQL and proxies drop idle connections (optuna#5600); Optuna sets this only for MySQL.
        "pool_pre_ping": True,
        "pool_recycle": 300,
        "pool_timeout": 60,
    }


def get_storage(
    url: str, *, heartbeat: bool = True, retry_failed: int = 1
) -> optuna.storages.BaseStorage:
    if is_file_storage(url):
        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # The open-lock works on every local filesystem (the symlink lock needs symlink support).
        return JournalStorage(
            JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        )
    kwargs = {}
    if heartbeat:
        kwargs = dict(
            heartbeat_interval=HEARTBEAT_INTERVAL,
            grace_period=GRACE_PERIOD,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retry_failed)
            if retry_failed
            else None,
        )
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs(url), **kwargs)
    except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors: one line with the masked URL
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StorageError(f"cannot open storage {mask_url(url)}: {mask_url(msg)}") from None


def describe(url: str) -> str:
    return f"file {url}" if is_file_storage(url) else mask_url(url)
