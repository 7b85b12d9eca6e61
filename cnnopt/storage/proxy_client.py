"""The client of the storage proxy (``grpc://``, ``grpcs://``; the server is ``cnnopt.proxy``):
Optuna's GrpcStorageProxy with retries, heartbeats and trial ownership.

Apart because it is the one storage that is neither a file nor a database: it sends every
call over gRPC, keeps its own heartbeats (Optuna's proxy forwards none) and restores parameter
order, and it is the only part of ``cnnopt.storage`` that needs grpcio at run time.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from cnnopt.errors import StorageError
from cnnopt.storage.owners import HEARTBEAT_KEY, _OwnedTrials
from cnnopt.storage.retry import _RETRIED, _one_line, _RepeatSafe, _retrying
from cnnopt.storage.urls import GRACE_PERIOD, parse_proxy_url

log = logging.getLogger("cnnopt.storage")

# gRPC reconnects with exponential backoff up to 120 s by default; keep a restarted proxy found
# within a second or two.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class _GrpcClient(_RepeatSafe, GrpcStorageProxy, BaseHeartbeat):
    """Optuna's GrpcStorageProxy (the client of ``run_proxy``) made as robust as
    RetryingRDBStorage, plus heartbeats (``RetryingGrpcStorageProxy`` adds trial ownership).

    - A proxy that is down or restarting (gRPC UNAVAILABLE) is retried with exponential backoff
      for ``retry_seconds``, like a lost database connection; any other gRPC failure, or a proxy
      gone for longer, becomes Optuna's StorageInternalError with one line.
    - Creating a trial is made safe to repeat: the trial carries a random token, and a repeat
      first looks for a trial with that token (the proxy may have created it just before it
      died), so a restart never leaves a stray RUNNING trial behind.
    - Heartbeats. Optuna's proxy forwards no heartbeats (GrpcStorageProxy is no heartbeat
      storage, so Optuna would neither send them nor find stale trials). This client is one:
      Optuna's heartbeat thread writes the worker's clock into the trial system attribute
      ``HEARTBEAT_KEY`` every ``heartbeat_interval`` s, and ``fail_stale_trials`` fails a RUNNING
      trial whose heartbeat this process has seen *unchanged* for ``grace_period`` s. Judging by
      what this process saw, not by comparing clocks, needs no clock sync between machines; a
      check after a long pause (the proxy was down, nobody looked) starts the watch afresh, so an
      outage never fails live trials.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        retry_seconds: float | None = None,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Callable | None = None,
        tls: bool = False,
    ) -> None:
        self._tls = tls  # grpcs://: TLS with the CA in CNNOPT_PROXY_CA (cnnopt.proxy)
        self._local = threading.local()
        self._seen_lock = threading.Lock()
        if retry_seconds is not None:
            self.retry_seconds = retry_seconds
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or GRACE_PERIOD
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        # trial_id -> (heartbeat value, when this process first saw that value); last check time
        self._seen: dict[int, tuple[Any, float]] = {}
        self._last_check = 0.0
        super().__init__(host=host, port=port)

    @property
    def url(self) -> str:
        return f"{'grpcs' if self._tls else 'grpc'}://{self._host}:{self._port}"

    def _retry_url(self) -> str:
        return self.url

    def _setup(self) -> None:
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        from cnnopt.proxy import client_channel  # TLS and the proxy token, from the environment

        self._channel = client_channel(self._host, self._port, self._tls, _CHANNEL_OPTIONS)
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in ("_local", "_seen_lock", "_seen", "_order"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._local = threading.local()
        self._seen_lock = threading.Lock()
        self._seen = {}
        super().__setstate__(state)

    def _retry(self, name: str, fn: Callable[[int], Any]) -> Any:
        import grpc

        try:
            return super()._retry(name, fn)
        except grpc.RpcError as e:
            if getattr(self._local, "depth", 0):
                raise  # the outer call decides
            raise optuna.exceptions.StorageInternalError(
                f"storage proxy {self.url}: {name}: {_one_line(e)}"
            ) from e

    # heartbeats (BaseHeartbeat)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile
        except Exception as e:  # noqa: BLE001 - a raise here would end Optuna's heartbeat thread
            log.warning("trial id %d: heartbeat not recorded: %s", trial_id, _one_line(e))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.monotonic()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        with self._seen_lock:
            fresh_watch = now - self._last_check > self.grace_period / 2
            self._last_check = now
            stale = []
            seen: dict[int, tuple[Any, float]] = {}
            for t in running:
                beat = t.system_attrs.get(HEARTBEAT_KEY)
                if beat is None:
                    continue  # not sending heartbeats (a plain Optuna client): never stale
                old = self._seen.get(t._trial_id)
                since = old[1] if old and old[0] == beat and not fresh_watch else now
                seen[t._trial_id] = (beat, since)
                if now - since > self.grace_period:
                    stale.append(t._trial_id)
            self._seen = seen
        return stale

    def heartbeat_ages(self, trials: Sequence[FrozenTrial]) -> dict[int, float]:
        """Seconds since each trial's last heartbeat, by the worker's clock against ours."""
        now = time.time()
        return {
            t._trial_id: max(0.0, now - float(t.system_attrs[HEARTBEAT_KEY]))
            for t in trials
            if isinstance(t.system_attrs.get(HEARTBEAT_KEY), int | float)
        }

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return self.heartbeat_stale_trial_callback


# every call the client sends (Optuna's other storage methods are built on these)
_GRPC_CALLS = [
    name
    for name in _RETRIED
    if name in GrpcStorageProxy.__dict__ and name not in _GrpcClient.__dict__
]
for _name in _GRPC_CALLS:
    setattr(_GrpcClient, _name, _retrying(GrpcStorageProxy, _name))


class RetryingGrpcStorageProxy(_OwnedTrials, _GrpcClient):
    """The storage proxy's client (``_GrpcClient``) with trial ownership and repeatable trial
    creation (``_OwnedTrials``): the proxy may create the trial just before it dies, and the
    repeat finds it by its token.

    Parameter order: a trial's params travel as a protobuf map, which keeps no order, while
    Optuna's storages return them in the order they were suggested. The client restores that
    order for the trials whose params it wrote itself (the worker running the trial); another
    process reading them gets the map's order."""

    def _beats_as_attr(self) -> bool:
        return bool(self.heartbeat_interval)

    def _param_order(self) -> dict[int, list[str]]:
        order = self.__dict__.get("_order")
        if order is None:
            order = self.__dict__["_order"] = {}
        return order

    def set_trial_param(self, trial_id, param_name, param_value_internal, distribution) -> None:
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        names = self._param_order().setdefault(trial_id, [])
        if param_name not in names:
            names.append(param_name)

    def _ordered(self, t: FrozenTrial) -> FrozenTrial:
        names = self._param_order().get(t._trial_id)
        if not names or list(t.params) == names[: len(t.params)]:
            return t
        import copy

        rank = {n: i for i, n in enumerate(names)}
        keys = sorted(t.params, key=lambda k: rank.get(k, len(rank)))
        t = copy.copy(t)
        t.params = {k: t.params[k] for k in keys}
        t.distributions = {k: t.distributions[k] for k in keys}
        return t

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._ordered(super().get_trial(trial_id))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Sequence[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [self._ordered(t) for t in trials]


def open_proxy(url: str, connect_retry: float = 0.0, **kwargs: Any) -> RetryingGrpcStorageProxy:
    """The client of the storage proxy at ``grpc(s)://host:port``, once the proxy answers and
    accepts this client (``cnnopt.proxy.check_client``).

    ``connect_retry`` as for ``open_rdb``; a CLI command waits a few seconds at most."""
    host, port = parse_proxy_url(url)
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise StorageError(
            f"storage {url}: the storage proxy needs grpcio: pip install grpcio protobuf"
        ) from None
    from cnnopt.proxy import check_client

    with warnings.catch_warnings():  # experimental since Optuna 4.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RetryingGrpcStorageProxy(host, port, tls=url.startswith("grpcs://"), **kwargs)
    try:
        check_client(storage, wait=max(connect_retry, 5.0))
    except BaseException:
        storage.close()
        raise
    return storage
