"""get_storage: the one place that turns a storage URL into an Optuna storage.

- no URL: an Optuna JournalStorage file under ``storage/`` (safe for several processes on one
  machine; SQLite is not safe with parallel writers);
- ``*.journal`` path or ``journal:///path``: a JournalStorage file there;
- anything else with ``://``: an SQLAlchemy URL for RDBStorage (PostgreSQL, MySQL, SQLite), with
  engine settings for many workers and heartbeats so a dead worker's trial does not stay RUNNING.
  Server databases (PostgreSQL, MySQL) get a ``RetryingRDBStorage``: every storage call rides out a
  lost connection (a database restart, a failover, a dropped idle connection) by retrying with
  exponential backoff for up to ``RETRY_SECONDS``.
- ``grpc://host:port``: a ``RetryingGrpcStorageProxy``, the client of an Optuna storage proxy
  (``run_proxy``: ``optuna.storages.run_grpc_proxy_server`` in front of a database). Every worker
  then talks to the proxy, and only the proxy's pool of ``PROXY_POOL_SIZE`` connections reaches
  the database, however many workers there are. The client retries a lost proxy like a lost
  database connection, and records heartbeats through the proxy (Optuna's proxy has none).

Connections. Each process holds at most ``POOL_SIZE`` = 2 connections (``max_overflow=0``): one for
its main thread and one for the heartbeat thread that Optuna runs beside a trial. ``cnnopt run
--workers N`` is N worker processes plus the runner process, so it opens at most

    2 * (N + 1) connections in total

(N=16: 34; PostgreSQL's default ``max_connections`` is 100, so one run may have up to 48 workers).
Every further ``cnnopt run`` (e.g. one per docker container: 1 runner + 1 worker = 4), ``status``
or ``dashboard`` process adds its own 2 * (its processes). Connections are checked with
``pool_pre_ping`` before use (PostgreSQL and proxies drop idle ones, optuna#5600) and recycled after
``POOL_RECYCLE`` seconds. Through the proxy: ``PROXY_POOL_SIZE`` per proxy, whatever the number
of clients.

Passwords never leave this package unmasked: use ``mask_url`` for anything printed.

This file is the factory (``get_storage``, ``open_rdb``, ``heartbeat_settings``, ``describe``,
the retry of a dead worker's trial) and the names the rest of cnnopt imports from
``cnnopt.storage``. The parts a reader looks for separately have modules of their own:
``urls`` (what a URL means, the settings above), ``retry`` (riding out lost connections),
``owners`` (who runs a trial, hidden bookkeeping attributes) and ``proxy_client`` (the client
of the storage proxy).
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial

# The public names, imported by the rest of cnnopt and by users from ``cnnopt.storage``.
from cnnopt.errors import StorageError
from cnnopt.storage.owners import (
    CLAIM_PREFIX,
    CREATE_TOKEN_KEY,
    HEARTBEAT_KEY,
    OWNER_KEY,
    RETRY_OWED_KEY,
    OwnedJournalStorage,
    OwnedRDBStorage,
    OwnedSQLiteStorage,
    _is_hidden,
    claimants,
    owner_of,
)
from cnnopt.storage.proxy_client import RetryingGrpcStorageProxy, open_proxy
from cnnopt.storage.retry import (
    RETRY_FIRST_DELAY,
    RETRY_MAX_DELAY,
    RETRY_SECONDS,
    RetryingRDBStorage,
    _one_line,
    is_connection_error,
    retry_call,
)
from cnnopt.storage.urls import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    POOL_RECYCLE,
    POOL_SIZE,
    PROXY_POOL_SIZE,
    PROXY_PORT,
    PROXY_THREADS_PER_CONNECTION,
    STORAGE_DIR,
    default_url,
    engine_kwargs,
    is_file_storage,
    is_proxy_storage,
    mask_url,
    max_connections,
    parse_proxy_url,
    resolve_url,
)

__all__ = [  # what ``from cnnopt.storage import ...`` offers
    "CLAIM_PREFIX",
    "CREATE_TOKEN_KEY",
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_KEY",
    "KEPT_USER_ATTRS",
    "OWNER_KEY",
    "POOL_RECYCLE",
    "POOL_SIZE",
    "PROXY_POOL_SIZE",
    "PROXY_PORT",
    "PROXY_THREADS_PER_CONNECTION",
    "RETRY_FIRST_DELAY",
    "RETRY_MAX_DELAY",
    "RETRY_OWED_KEY",
    "RETRY_SECONDS",
    "STORAGE_DIR",
    "OwnedJournalStorage",
    "OwnedRDBStorage",
    "OwnedSQLiteStorage",
    "RetryStaleTrialCallback",
    "RetryingGrpcStorageProxy",
    "RetryingRDBStorage",
    "StorageError",
    "claimants",
    "default_url",
    "describe",
    "engine_kwargs",
    "get_storage",
    "heartbeat_settings",
    "is_connection_error",
    "is_file_storage",
    "is_proxy_storage",
    "mask_url",
    "max_connections",
    "open_proxy",
    "open_rdb",
    "owner_of",
    "parse_proxy_url",
    "resolve_url",
    "retry_call",
]

# user attributes that a retry inherits from the trial it repeats (cnnopt.study.WARM_START)
KEPT_USER_ATTRS = ("warm_start",)


class RetryStaleTrialCallback(RetryHeartbeatStaleTrialCallback):
    """Optuna's RetryHeartbeatStaleTrialCallback (re-enqueue a dead worker's trial with the same
    params, ``system_attrs['failed_trial']`` = the original's number), minus the failed run's
    user attributes (its fail_reason, curves, timings): the retry records its own. Kept: what
    the study asked of the trial (``KEPT_USER_ATTRS``: a warm start stays a warm start, never
    pruned). A trial that died before it sampled anything has no params: an enqueued one's
    values are in ``system_attrs['fixed_params']``, which the retry carries over."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        import copy

        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in KEPT_USER_ATTRS}
        # nor the failed run's heartbeat, creation token and owner (cnnopt's bookkeeping)
        trial.system_attrs = {
            k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_KEY and not _is_hidden(k)
        }
        super().__call__(study, trial)


def _schema_error(url: str, message: str) -> StorageError:
    found = re.search(r"set up by optuna ([^)\s]+)", message)
    made_by = f"Optuna {found.group(1)}" if found else "another Optuna version"
    if "storage upgrade" in message:
        fix = (
            f"back it up, then run `optuna storage upgrade --storage URL` "
            f"(or use {made_by} with it)"
        )
    else:
        fix = f"it is newer than this Optuna: `pip install -U optuna` (or use {made_by})"
    return StorageError(
        f"storage {mask_url(url)} has a table schema made by {made_by}, incompatible with "
        f"Optuna {optuna.__version__}: {fix}"
    )


def _is_creation_race(e: BaseException) -> bool:
    """Two processes creating Optuna's tables at once (optuna#1092): one loses with an
    IntegrityError/ProgrammingError ('already exists', 'duplicate key')."""
    from sqlalchemy import exc

    err: BaseException | None = e
    while err is not None:
        if isinstance(err, exc.IntegrityError | exc.ProgrammingError):
            return True
        err = err.__cause__
    return False


def open_rdb(
    url: str,
    connect_retry: float = 0.0,
    pool_size: int = POOL_SIZE,
    owned: bool = False,
    **kwargs: Any,
) -> RDBStorage:
    """RDBStorage (RetryingRDBStorage for server databases), with one-line errors; ``owned``:
    with trial ownership (``_OwnedTrials``), as get_storage opens it.

    ``connect_retry``: seconds to keep retrying a refused connection while opening (workers use
    RETRY_SECONDS so that one started during a database restart waits; the CLI uses 0 so that a
    wrong URL is reported at once)."""
    if owned:
        cls = OwnedSQLiteStorage if url.startswith("sqlite") else OwnedRDBStorage
    else:
        cls = RDBStorage if url.startswith("sqlite") else RetryingRDBStorage
    start = time.monotonic()
    for race in range(6):
        try:
            return retry_call(
                lambda _n: cls(url, engine_kwargs=engine_kwargs(url, pool_size), **kwargs),
                what="open",
                url=url,
                seconds=max(0.0, connect_retry - (time.monotonic() - start)),
            )
        except RuntimeError as e:
            if "compatible with the table schema" in str(e):
                raise _schema_error(url, str(e)) from None
            raise StorageError(f"cannot open storage {mask_url(url)}: {_one_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors: one line, masked URL
            if _is_creation_race(e) and race < 5:
                time.sleep(0.2 + random.random())
                continue
            raise StorageError(f"cannot open storage {mask_url(url)}: {_one_line(e)}") from None
    raise AssertionError("unreachable")


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: HEARTBEAT_INTERVAL and GRACE_PERIOD, or
    $CNNOPT_HEARTBEAT_INTERVAL and $CNNOPT_GRACE_PERIOD. Every process of a study must agree:
    set them for all of them. A shorter grace period gets a trial whose whole machine vanished
    (no runner left to fail it at once) re-queued sooner; it must stay well above the interval
    plus the longest stall a live worker can have (a database restart, a loaded CPU), or live
    trials are failed and run twice. The chaos run (cnnopt.bench.chaos) shortens both."""
    values = []
    for name, default in (
        ("CNNOPT_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL),
        ("CNNOPT_GRACE_PERIOD", GRACE_PERIOD),
    ):
        raw = os.environ.get(name, "").strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = 0
        if value < 1:
            raise StorageError(f"{name}={raw!r}: expected a whole number of seconds >= 1")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise StorageError(
            f"CNNOPT_GRACE_PERIOD={grace} must be longer than the heartbeat interval {interval}"
        )
    return interval, grace


def get_storage(
    url: str, *, heartbeat: bool = True, retry_failed: int = 1, connect_retry: float = 0.0
) -> optuna.storages.BaseStorage:
    if is_file_storage(url):
        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # The open-lock works on every local filesystem (the symlink lock needs symlink support).
        return _with_owner(
            OwnedJournalStorage(
                JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            )
        )
    kwargs: dict[str, Any] = {}
    if heartbeat:
        interval, grace = heartbeat_settings()
        kwargs = dict(
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryStaleTrialCallback(max_retry=retry_failed)
            if retry_failed
            else None,
        )
    if is_proxy_storage(url):
        return _with_owner(open_proxy(url, connect_retry=connect_retry, **kwargs))
    return _with_owner(open_rdb(url, connect_retry=connect_retry, owned=True, **kwargs))


def _with_owner(storage: Any) -> Any:
    """Every storage get_storage opens owns the trials it starts, under a random id of its own
    (a `cnnopt run` worker replaces it with its runner's run id): so a lost reply to a claim is
    recognised in any script, and no runner can take these trials for its own."""
    import socket
    import uuid

    storage.owner = f"{uuid.uuid4().hex[:12]}/{socket.gethostname()}:{os.getpid()}"
    return storage


def describe(url: str) -> str:
    return f"file {url}" if is_file_storage(url) else mask_url(url)
