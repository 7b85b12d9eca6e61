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

Passwords never leave this module unmasked: use ``mask_url`` for anything printed.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import (
    GrpcStorageProxy,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from cnnopt.errors import StorageError

log = logging.getLogger("cnnopt.storage")

STORAGE_DIR = Path("storage")
# Heartbeats run in a thread beside training, so a long CPU epoch never delays them; the grace
# period only has to cover a stalled database connection (optuna#4234, #5470: too short fails live
# trials) -- and a database restart, which the retries below ride out.
HEARTBEAT_INTERVAL = 30
GRACE_PERIOD = 180
# Per process: the main thread and the heartbeat thread each hold at most one connection.
POOL_SIZE = 2
POOL_RECYCLE = 300
# How long one storage call keeps retrying a lost connection before giving up (> 30 s: a
# PostgreSQL restart, a managed database's failover).
RETRY_SECONDS = 60.0
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 8.0
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


# -- retrying lost connections -------------------------------------------------------------------


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


# -- who owns a trial ----------------------------------------------------------------------------

# A trial system attribute: the worker's clock at its last heartbeat (written through the proxy).
HEARTBEAT_KEY = "cnnopt:heartbeat"
# Trial system attributes that are cnnopt's bookkeeping, invisible to whoever reads the trials
# through get_storage (a user, Optuna's samplers, the dashboard, the retry of a failed trial):
# - CREATE_TOKEN_KEY: a random token that makes creating a trial safe to repeat;
# - OWNER_KEY: ``RUN_ID/HOST:PID`` of the worker that runs the trial, written in the same storage
#   call that makes the trial RUNNING when the trial is new (see ``_OwnedTrials``);
# - CLAIM_PREFIX + owner: True while that worker claims a WAITING trial, False once it lost.
# - RETRY_OWED_KEY: written on a RUNNING trial just before cnnopt fails it with a retry to come;
#   a failed trial that carries it and has no retry was left by a process killed between the two
#   writes, and any runner re-queues it (``cnnopt.runner.requeue_owed``).
CREATE_TOKEN_KEY = "cnnopt:create_token"
OWNER_KEY = "cnnopt:owner"
CLAIM_PREFIX = "cnnopt:claim:"
RETRY_OWED_KEY = "cnnopt:retry_owed"
_HIDDEN = (CREATE_TOKEN_KEY, OWNER_KEY, RETRY_OWED_KEY)


def _is_hidden(key: str) -> bool:
    return key in _HIDDEN or key.startswith(CLAIM_PREFIX)


def _visible(t: FrozenTrial) -> FrozenTrial:
    """The trial as a user sees it: without cnnopt's hidden system attributes (a copy if any)."""
    if not any(_is_hidden(k) for k in t.system_attrs):
        return t
    import copy

    t = copy.copy(t)
    t.system_attrs = {k: v for k, v in t.system_attrs.items() if not _is_hidden(k)}
    return t


def claimants(t: FrozenTrial) -> set[str]:
    """Owners that claimed the WAITING trial ``t`` and have not (yet) said they lost."""
    return {
        k[len(CLAIM_PREFIX) :]
        for k, v in t.system_attrs.items()
        if k.startswith(CLAIM_PREFIX) and v
    }


def owner_of(t: FrozenTrial) -> str | None:
    """Who provably runs ``t`` (a raw trial, see ``raw_trials``): its OWNER_KEY, or else the one
    cnnopt worker still claiming it. A claimant writes its claim *before* it tries the
    WAITING->RUNNING switch, so once the trial is RUNNING the winner's claim is in the storage:
    if exactly one claim stands, that claimant won (the others wrote False after losing). Two
    standing claims (a loser that died or stalls before saying so): nobody can prove it, and the
    trial is left to ``abandoned_trials``. None for trials of plain Optuna clients."""
    owner = t.system_attrs.get(OWNER_KEY)
    if owner:
        return str(owner)
    standing = claimants(t)
    return standing.pop() if len(standing) == 1 else None


class _OwnedTrials:
    """Trials that say which worker runs them, from the moment they are RUNNING, and creation
    that is safe to repeat. Mixed in before the storage class (``super()`` is that class).

    - ``create_new_trial`` writes a random CREATE_TOKEN_KEY, and the creating worker's
      ``owner`` as OWNER_KEY when the new trial is RUNNING (study.ask()), in the one storage call
      that creates the trial: there is no moment when the trial exists and has no owner. A repeat
      after a lost reply (the database or proxy committed, the answer never came) first looks for
      the token, so it never leaves a second RUNNING trial behind. A WAITING trial (an enqueued
      one, a retry) gets no owner: whoever claims it later owns it.
    - Claiming a WAITING trial (``set_trial_state_values(..., RUNNING)``, Optuna's
      ``_pop_waiting_trial_id``) cannot write an attribute in the same call, so the claimant
      writes ``CLAIM_PREFIX + owner`` = True first, then switches the state, then writes
      OWNER_KEY (won) or its claim = False (lost). ``owner_of`` turns that into proof. A switch
      whose reply was lost returns False on its repeat; if the trial is RUNNING, ownerless and
      ours is the one standing claim, it was our own write, and the trial is ours.
    - Reads hide those attributes (``_visible``): through get_storage a trial looks exactly as
      Optuna wrote it (Optuna's own storage test suite passes). ``raw_trials`` sees them.
    """

    owner: str | None = None

    def _beats_as_attr(self) -> bool:
        """Whether this storage's heartbeats are the HEARTBEAT_KEY attribute (the proxy client)."""
        return False

    def _beat_first(self, trial_id: int) -> None:
        """A heartbeat before a trial becomes this worker's. Optuna's heartbeat thread starts
        only after study.ask(), and its stale check ignores a trial that never sent one: a worker
        killed with its whole machine (runner included, so nobody fails its trials at once) in
        between left a RUNNING trial that nobody would ever fail. A new trial gets its first
        heartbeat in the call that creates it; a claimed WAITING trial just before the claim."""
        if getattr(self, "heartbeat_interval", None):
            self.record_heartbeat(trial_id)  # type: ignore[attr-defined]

    def _call(self, name: str, fn: Callable[[int], Any]) -> Any:
        retry = getattr(self, "_retry", None)
        return retry(name, fn) if retry is not None else fn(0)

    def raw_trials(
        self, study_id: int, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        """The study's trials with cnnopt's bookkeeping attributes (``owner_of``)."""
        return super().get_all_trials(study_id, deepcopy=False, states=states)  # type: ignore[misc]

    def raw_trial(self, trial_id: int) -> FrozenTrial:
        return super().get_trial(trial_id)  # type: ignore[misc]

    def _create_owned(
        self, study_id: int, template_trial: FrozenTrial | None, create: Callable
    ) -> Any:
        """``create(study_id, template)`` with the token (and owner) in the template, repeated
        after a lost reply only if no trial carries the token yet; returns what create returns
        (or, when found by its token, the trial as ``raw_trial`` reads it)."""
        import copy
        import datetime
        import uuid

        token = uuid.uuid4().hex
        if template_trial is None:  # what the storage would create: a RUNNING trial, now
            template = FrozenTrial(
                number=-1, state=TrialState.RUNNING, value=None,
                datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
                distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
                trial_id=-1,
            )  # fmt: skip
        else:
            template = copy.deepcopy(template_trial)
        attrs = {k: v for k, v in template.system_attrs.items() if not _is_hidden(k)}
        attrs[CREATE_TOKEN_KEY] = token
        if self.owner and template.state == TrialState.RUNNING:
            attrs[OWNER_KEY] = self.owner
            if self._beats_as_attr():
                attrs[HEARTBEAT_KEY] = time.time()  # a heartbeat from birth: see _beat_first
        template.system_attrs = attrs

        def attempt(n: int) -> Any:
            if n > 0:
                for t in self.raw_trials(study_id):
                    if t.system_attrs.get(CREATE_TOKEN_KEY) == token:
                        log.info("trial id %d: created before the lost connection", t._trial_id)
                        return t
            return create(study_id, template)

        return self._call("create_new_trial", attempt)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        found = self._create_owned(study_id, template_trial, super().create_new_trial)  # type: ignore[misc]
        return found._trial_id if isinstance(found, FrozenTrial) else found

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        base = super().set_trial_state_values  # type: ignore[misc]
        if state != TrialState.RUNNING or not self.owner:
            return base(trial_id, state, values)
        owner = self.owner
        claim = CLAIM_PREFIX + owner
        # raises UpdateFinishedTrialError for a finished trial, as the switch itself would
        super().set_trial_system_attr(trial_id, claim, True)  # type: ignore[misc]
        self._beat_first(trial_id)
        tries = []

        def attempt(n: int) -> bool:
            tries.append(n)
            return base(trial_id, state, values)

        won = self._call("set_trial_state_values", attempt)
        if not won and len(tries) > 1:  # repeated after a lost reply: was the first one ours?
            t = self.raw_trial(trial_id)
            won = t.state == TrialState.RUNNING and owner_of(t) == owner
            if won:
                log.info("trial id %d: the claim before the lost connection was ours", trial_id)
        try:
            if won:
                super().set_trial_system_attr(trial_id, OWNER_KEY, owner)  # type: ignore[misc]
            else:
                super().set_trial_system_attr(trial_id, claim, False)  # type: ignore[misc]
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (failed as stale, or by its runner): nothing to own
        return won

    # reads, without the bookkeeping

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return _visible(super().get_trial(trial_id))  # type: ignore[misc]

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Sequence[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = super().get_all_trials(study_id, deepcopy=deepcopy, states=states)  # type: ignore[misc]
        return [self._visible_finished(t) for t in trials]

    def _visible_finished(self, t: FrozenTrial) -> FrozenTrial:
        """``_visible``, remembered for a finished trial (it no longer changes) as long as the
        storage hands out the same object for it (deepcopy=False): samplers read every trial
        of the study before each suggestion, and a fresh copy of each would cost 40x the read."""
        if not t.state.is_finished():
            return _visible(t)
        memo = self.__dict__.get("_memo")
        if memo is None:
            memo = self.__dict__["_memo"] = {}
        hit = memo.get(t._trial_id)
        if hit is not None and hit[0] is t:
            return hit[1]
        seen = _visible(t)
        memo[t._trial_id] = (t, seen)
        return seen

    def __getstate__(self) -> Any:
        state = super().__getstate__()  # type: ignore[misc]
        if isinstance(state, dict) and "_memo" in state:
            state = {k: v for k, v in state.items() if k != "_memo"}
        return state

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return _visible(super().get_best_trial(study_id))  # type: ignore[misc]

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        attrs = super().get_trial_system_attrs(trial_id)  # type: ignore[misc]
        return {k: v for k, v in attrs.items() if not _is_hidden(k)}


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


class _OwnedRDB(_OwnedTrials):
    """``_OwnedTrials`` for RDBStorage, whose users go through Optuna's ``_CachedStorage``
    (what ``optuna.load_study`` puts around any RDBStorage): that one creates trials with
    ``_create_new_trial`` and reads them with ``_get_trials``, so those are the calls to own
    and to filter."""

    def raw_trials(
        self, study_id: int, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return super()._get_trials(study_id, states, set(), -1)  # type: ignore[misc]

    def raw_trial(self, trial_id: int) -> FrozenTrial:
        return super(_OwnedTrials, self).get_trial(trial_id)  # type: ignore[misc]

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        return _visible(self._create_owned(study_id, template_trial, self._create_once))

    def _create_once(self, study_id: int, template: FrozenTrial) -> FrozenTrial:
        """RDBStorage._create_new_trial without its own blind repeats (it retries a failed
        commit up to 5 times, and a commit whose reply was lost then makes a second trial):
        ``_create_owned`` repeats it, by token."""
        import copy

        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:  # type: ignore[attr-defined]
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
            trial = self._get_prepared_new_trial(study_id, template, session)  # type: ignore[attr-defined]
            if template.state == TrialState.RUNNING and self.heartbeat_interval:  # type: ignore[attr-defined]
                # its first heartbeat in the same transaction (see _OwnedTrials._beat_first)
                session.add(models.TrialHeartbeatModel(trial_id=trial.trial_id))
            frozen = copy.deepcopy(template)
            frozen.number = trial.number
            frozen.datetime_start = trial.datetime_start
            frozen._trial_id = trial.trial_id
            return frozen

    def _get_trials(
        self,
        study_id: int,
        states: Any,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        trials = super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)  # type: ignore[misc]
        return [_visible(t) for t in trials]


class OwnedRDBStorage(_OwnedRDB, RetryingRDBStorage):
    """What get_storage returns for a database server: retries (RetryingRDBStorage) and trial
    ownership (``_OwnedTrials``). The proxy's own backend is a plain RetryingRDBStorage: it must
    pass the clients' bookkeeping attributes through unfiltered."""


class OwnedSQLiteStorage(_OwnedRDB, RDBStorage):
    """SQLite (one machine, no lost connections): trial ownership only."""


class OwnedJournalStorage(_OwnedTrials, JournalStorage):
    """The journal file (one machine): trial ownership only."""


# -- the storage proxy ---------------------------------------------------------------------------

# gRPC reconnects with exponential backoff up to 120 s by default; keep a restarted proxy found
# within a second or two.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def parse_proxy_url(url: str) -> tuple[str, int]:
    """grpc(s)://host:port -> (host, port); the port defaults to PROXY_PORT."""
    found = re.fullmatch(r"grpcs?://([^:/\s]+)(?::(\d+))?/?", url)
    if not found:
        raise StorageError(
            f"storage {mask_url(url)}: expected grpc://HOST:PORT or grpcs://HOST:PORT"
        )
    return found.group(1), int(found.group(2) or PROXY_PORT)


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


# -- opening a storage ---------------------------------------------------------------------------


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
