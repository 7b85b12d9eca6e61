"""Riding out lost connections: every storage call to a database server or to the storage proxy
is retried with exponential backoff while the failure is a lost or refused connection.

Apart because it is one concern shared by two clients: ``RetryingRDBStorage`` (a database
server) here, and the proxy's client (``cnnopt.storage.proxy_client``), which mixes in the same
``_RepeatSafe``. A retried write may already have been committed before the connection broke, so
the writes that are not idempotent are made safe to repeat here too.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from cnnopt.storage.urls import mask_url

log = logging.getLogger("cnnopt.storage")

# How long one storage call keeps retrying a lost connection before giving up (> 30 s: a
# PostgreSQL restart, a managed database's failover).
RETRY_SECONDS = 60.0
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 8.0


def is_connection_error(e: BaseException) -> bool:
    """A lost/refused connection (worth retrying), as opposed to a bad query or a logic error.

    RDBStorage turns every SQLAlchemyError raised inside its sessions into a StorageInternalError
    ``from`` the original, so look down the cause chain."""
    from sqlalchemy import exc

    seen = 0
    err: BaseException | None = e
    while err is not None and seen < 4:
        if _is_grpc_unavailable(err):
            return True
        if isinstance(err, exc.DBAPIError) and err.connection_invalidated:
            return True
        if isinstance(err, exc.OperationalError | exc.InterfaceError | exc.TimeoutError):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _is_grpc_unavailable(e: BaseException) -> bool:
    """The storage proxy is down, restarting or unreachable (gRPC status UNAVAILABLE)."""
    import sys

    grpc = sys.modules.get("grpc")  # never import gRPC for a database or file storage
    if grpc is None or not isinstance(e, grpc.RpcError) or not hasattr(e, "code"):
        return False
    return e.code() == grpc.StatusCode.UNAVAILABLE


def _one_line(e: BaseException) -> str:
    details = getattr(e, "details", None)  # a gRPC error's str() is a multi-line debug dump
    if callable(details) and details():
        return mask_url(str(details()).strip().splitlines()[0])
    text = str(e).strip().splitlines()
    return mask_url(text[0] if text else type(e).__name__)


class _RepeatSafe:
    """Storage calls that retry lost connections, with the writes that are not idempotent made
    safe to repeat (the first attempt may have committed before the connection broke):
    - ``set_trial_state_values``: a repeat that finds the trial already finished with exactly the
      state and values we wrote is a success (not UpdateFinishedTrialError; optuna#5582);
    - ``create_new_study``: a repeat that finds the study is a success.
    Attribute, parameter, intermediate-value and heartbeat writes are upserts (repeatable as is).
    Calls nested inside a retried call are not retried again (the outer call repeats them).
    Mixed in before the storage class whose calls it retries (``super()`` is that class)."""

    retry_seconds = RETRY_SECONDS
    _local: threading.local

    def _retry_url(self) -> str:
        raise NotImplementedError

    def _retry(self, name: str, fn: Callable[[int], Any]) -> Any:
        if getattr(self._local, "depth", 0):
            return fn(0)
        self._local.depth = 1
        try:
            return retry_call(fn, what=name, url=self._retry_url(), seconds=self.retry_seconds)
        finally:
            self._local.depth = 0

    # the non-idempotent writes

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        base = super().set_trial_state_values  # type: ignore[misc]

        def attempt(n: int) -> bool:
            try:
                return base(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if n > 0 and _already_written(self.get_trial(trial_id), state, values):  # type: ignore[attr-defined]
                    log.info(
                        "trial %d: the write before the lost connection was committed", trial_id
                    )
                    return True
                raise

        return self._retry("set_trial_state_values", attempt)

    def create_new_study(self, directions: Sequence[Any], study_name: str | None = None) -> int:
        base = super().create_new_study  # type: ignore[misc]

        def attempt(n: int) -> int:
            try:
                return base(directions, study_name)
            except optuna.exceptions.DuplicatedStudyError:
                if n > 0 and study_name is not None:
                    return self.get_study_id_from_name(study_name)  # type: ignore[attr-defined]
                raise

        return self._retry("create_new_study", attempt)


class RetryingRDBStorage(_RepeatSafe, RDBStorage):
    """RDBStorage whose storage calls retry lost connections with exponential backoff
    (see ``_RepeatSafe``)."""

    def __init__(self, url: str, *args: Any, retry_seconds: float | None = None, **kwargs: Any):
        self._local = threading.local()
        if retry_seconds is not None:
            self.retry_seconds = retry_seconds
        super().__init__(url, *args, **kwargs)

    def _retry_url(self) -> str:
        return self.url

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._local = threading.local()
        super().__setstate__(state)

    def record_heartbeat(self, trial_id: int) -> None:
        """Never raises. Optuna's heartbeat thread has no error handling: one exception ends it
        while training goes on, and once the grace period has passed the live trial is failed as
        stale and run a second time. So a beat that cannot be written (the database is down for
        longer than the retries) is logged and dropped, the thread lives, and the next beat
        (``heartbeat_interval`` later) lands as soon as the database is back. Connection errors
        are retried for at most one interval, so stopping the thread stays prompt."""
        seconds = min(self.retry_seconds, float(self.heartbeat_interval or self.retry_seconds))
        try:
            retry_call(
                lambda _n: RDBStorage.record_heartbeat(self, trial_id),
                what="record_heartbeat",
                url=self.url,
                seconds=seconds,
            )
        except Exception as e:  # noqa: BLE001 - see above: the heartbeat thread must survive
            log.warning(
                "storage %s: heartbeat of trial id %d not recorded (%s); next in %s s",
                mask_url(self.url), trial_id, _one_line(e), self.heartbeat_interval,
            )  # fmt: skip


def _already_written(t: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> bool:
    if t.state != state:
        return False
    if values is None:
        return True
    return t.values is not None and list(t.values) == [float(v) for v in values]


def retry_call(
    fn: Callable[[int], Any], *, what: str, url: str, seconds: float = RETRY_SECONDS
) -> Any:
    """Call ``fn(attempt)`` until it does not fail with a connection error, with exponential
    backoff (0.5 s, 1, 2, 4, 8, 8, ... with jitter) for up to ``seconds`` in all."""
    start = time.monotonic()
    delay = RETRY_FIRST_DELAY
    n = 0
    while True:
        try:
            return fn(n)
        except Exception as e:
            if not is_connection_error(e):
                raise
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                log.error(
                    "storage %s: %s failed for %.0f s, giving up: %s",
                    mask_url(url), what, elapsed, _one_line(e),
                )  # fmt: skip
                raise
            pause = min(delay * (0.75 + random.random() / 2), seconds - elapsed)
            n += 1
            log.warning(
                "storage %s: %s: connection lost (%s); retry %d in %.1f s",
                mask_url(url), what, _one_line(e), n, pause,
            )  # fmt: skip
            time.sleep(max(pause, 0.05))
            delay = min(delay * 2, RETRY_MAX_DELAY)


_RETRIED = (
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_n_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "_get_stale_trial_ids",
)


def _retrying(cls: type, name: str) -> Callable:
    base = getattr(cls, name)

    @functools.wraps(base)
    def method(self: _RepeatSafe, *args: Any, **kwargs: Any) -> Any:
        return self._retry(name, lambda _n: base(self, *args, **kwargs))

    return method


for _name in _RETRIED:
    setattr(RetryingRDBStorage, _name, _retrying(RDBStorage, _name))
