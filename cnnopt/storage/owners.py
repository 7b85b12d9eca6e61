"""Who owns a trial, from the moment it is RUNNING: the storage classes that ``get_storage``
returns write the worker that runs a trial into the trial itself, make creating a trial safe to
repeat, and hide that bookkeeping from every reader but cnnopt's runner.

Apart because it is what a runner relies on to fail only the trials it can prove are its own
(``owner_of``, ``claimants``, ``raw_trials``), whatever storage is underneath: the journal file,
SQLite, a database server (with ``cnnopt.storage.retry``), or the proxy's client
(``cnnopt.storage.proxy_client`` mixes in ``_OwnedTrials``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from cnnopt.storage.retry import RetryingRDBStorage

log = logging.getLogger("cnnopt.storage")

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
#   writes, and any runner re-queues it (``cnnopt.recovery.requeue_owed``).
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

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The stale trials, each marked RETRY_OWED_KEY before anyone fails it. Optuna's
        ``fail_stale_trials`` (run by every worker before each trial, and by the runner's stale
        check) fails them and only afterwards calls the retry callback: a process killed between
        the two lost the retry. With the mark, any runner writes it later (``requeue_owed``), as
        for ``cnnopt.recovery.fail_trial``. Only when the stale callback retries."""
        ids = super()._get_stale_trial_ids(study_id)  # type: ignore[misc]
        callback = self.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
        retries = isinstance(callback, RetryHeartbeatStaleTrialCallback) and (
            callback._max_retry is None or callback._max_retry > 0
        )
        for trial_id in ids if retries else ():
            try:
                self.set_trial_system_attr(trial_id, RETRY_OWED_KEY, True)  # type: ignore[attr-defined]
            except UpdateFinishedTrialError:
                pass  # it ended meanwhile: nothing is owed
        return ids

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
