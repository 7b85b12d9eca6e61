"""Failing and re-queueing the trials of workers that died: who may fail what, and the retry owed.

Several runners (one per machine or container) may share one study. Each has a random run id,
and each trial carries its owner, ``RUN_ID/HOST:PID`` of the worker running it, from the moment
it is RUNNING (``cnnopt.storage.owners._OwnedTrials``). A runner fails only trials it can prove
are its own: owned by one of *its* workers that it saw die. It never fails another runner's trial, however
late that runner is in writing anything. Trials claimed by cnnopt workers that nobody can prove
are theirs are failed by any runner once they are old enough (``abandoned_trials``); a retry whose
failing process died before writing it is written by any runner (``requeue_owed``).

Kept apart from the runner (``cnnopt.runner``, which calls these on each tick) and the workers
(``cnnopt.worker``, which re-queue their own interrupted trial): these functions read and write
only the storage, so tests call them on a study without any process around.
"""

from __future__ import annotations

import os
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnopt.storage import (
    CLAIM_PREFIX,
    GRACE_PERIOD,
    OWNER_KEY,
    RETRY_OWED_KEY,
    RETRY_SECONDS,
    RetryStaleTrialCallback,
    claimants,
    heartbeat_settings,
    owner_of,
)


def _backend(ostudy: optuna.Study) -> Any:
    """The storage under Optuna's _CachedStorage (which optuna.load_study puts around RDB)."""
    from optuna.storages._cached_storage import _CachedStorage

    storage = ostudy._storage
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def raw_trials(ostudy: optuna.Study, states=(TrialState.RUNNING,)) -> list:
    backend = _backend(ostudy)
    if not hasattr(backend, "raw_trials"):  # not opened by get_storage: no owners to read
        return []
    return backend.raw_trials(ostudy._study_id, states=states)


def fail_trial(
    ostudy: optuna.Study, trial_id: int, reason: str, max_retry: int, owner: str | None = None
) -> bool:
    """Mark a RUNNING trial FAIL with its reason and re-enqueue its params (Optuna's own retry).

    With ``owner``: only if the trial is still RUNNING and still provably that owner's, read
    right before the write (a trial that finished, or turns out to be someone else's, is left
    alone). The storages offer no compare-and-set on a trial's state, so a narrow gap remains
    between that read and the write; it only matters if the owner itself could still write, and
    the runner passes owners of workers it has seen die. True if this call failed the trial.

    An orphan that died before it sampled anything has no params, but an enqueued one (a warm
    start, a retry) has its values in ``system_attrs['fixed_params']``: re-queued from there."""
    storage = ostudy._storage
    if owner is not None:
        t = _backend(ostudy).raw_trial(trial_id)
        if t.state != TrialState.RUNNING or owner_of(t) != owner:
            return False
    try:
        if max_retry > 0 and hasattr(_backend(ostudy), "raw_trial"):
            # failing and re-queueing are two writes: a process killed between them would lose
            # the retry. The mark, written first, lets any runner finish the job (requeue_owed).
            storage.set_trial_system_attr(trial_id, RETRY_OWED_KEY, True)
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # it finished (or another process failed it) in the meantime
    t = storage.get_trial(trial_id)
    if max_retry > 0 and (t.params or t.system_attrs.get("fixed_params")):
        RetryStaleTrialCallback(max_retry=max_retry)(ostudy, t)
    return True


def _retried_numbers(trials) -> set[int]:
    """Numbers of the trials that have a retry (Optuna's ``retry_history`` ends with the number of
    the trial a retry re-runs)."""
    out = set()
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            out.add(history[-1])
    return out


def requeue_owed(ostudy: optuna.Study, max_retry: int, age: float | None = None) -> list[int]:
    """Re-queue the failed trials whose retry was owed but never written (their failing process
    died between the two writes; see ``fail_trial``), once ``age`` seconds have passed. Two
    runners that do it at the same moment could both write a retry: the later one (higher
    number) is withdrawn while it is still WAITING, and a copy that ran anyway is caught by
    deduplication (same configuration). Returns the numbers of the trials re-queued.

    ``age`` defaults to the heartbeat grace period (180 s): the failing process writes the retry
    at once unless its storage calls sit in the retry back-off (up to RETRY_SECONDS, 60 s), and
    the failure's time comes from another machine's clock."""
    import datetime

    if max_retry <= 0:
        return []
    if age is None:
        age = heartbeat_settings()[1]
    failed = [
        t
        for t in raw_trials(ostudy, states=(TrialState.FAIL,))
        if t.system_attrs.get(RETRY_OWED_KEY)
    ]
    if not failed:
        return []
    everything = raw_trials(ostudy, states=None)
    retried = _retried_numbers(everything)
    done = []
    for t in failed:
        if t.number in retried or t.datetime_complete is None:
            continue
        if not (t.params or t.system_attrs.get("fixed_params")):
            continue  # nothing to re-run (fail_trial does not re-queue these either)
        if len(t.system_attrs.get("retry_history", [])) + 1 > max_retry:
            continue  # its retries are used up
        now = datetime.datetime.now(t.datetime_complete.tzinfo)
        if (now - t.datetime_complete).total_seconds() < age:
            continue
        RetryStaleTrialCallback(max_retry=max_retry)(ostudy, ostudy._storage.get_trial(t._trial_id))
        done.append(t.number)
    if done:
        _withdraw_twin_retries(ostudy, set(done))
    return done


def _withdraw_twin_retries(ostudy: optuna.Study, numbers: set[int]) -> None:
    """Of two WAITING retries of the same trial, fail the later one (see ``requeue_owed``)."""
    first: dict[int, int] = {}
    for t in sorted(raw_trials(ostudy, states=None), key=lambda t: t.number):
        history = t.system_attrs.get("retry_history")
        if not history or history[-1] not in numbers:
            continue
        if history[-1] not in first:
            first[history[-1]] = t.number
        elif t.state == TrialState.WAITING:
            try:
                ostudy._storage.set_trial_user_attr(
                    t._trial_id, "fail_reason", f"a second retry of trial {history[-1]}"
                )
                ostudy._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # a worker took it meanwhile: deduplication makes it a copy


def requeue(ostudy: optuna.Study, trial_id: int) -> None:
    """Re-queue an interrupted trial's params, however often (an interrupt is not the trial's
    fault); ``system_attrs['failed_trial']`` lets the re-run find the trial's checkpoint."""
    RetryStaleTrialCallback(max_retry=None)(ostudy, ostudy._storage.get_trial(trial_id))


def fail_trials_of(
    ostudy: optuna.Study, owners: str | set[str], reason: str | dict[str, str], max_retry: int
) -> list[int]:
    """Fail the RUNNING trials provably owned by ``owners`` (dead workers of this runner; see
    ``cnnopt.storage.owner_of``), with ``reason`` (or ``reason[owner]``). Trials nobody can
    prove are theirs are never touched here: see ``abandoned_trials``."""
    owners = {owners} if isinstance(owners, str) else set(owners)
    failed = []
    for t in raw_trials(ostudy):
        owner = owner_of(t)
        if owner in owners:
            why = reason[owner] if isinstance(reason, dict) else reason
            if fail_trial(ostudy, t._trial_id, why, max_retry, owner=owner):
                failed.append(t.number)
    return failed


# -- a whole run killed, proved dead on this machine ---------------------------------------------


def process_space() -> str:
    """This machine's boot and this process's pid namespace, as ``BOOTID8-PIDNS``: two processes
    with the same value see the same pids (another machine has another boot id, another container
    on this one another pid namespace). "" where /proc cannot say (not Linux): then no run is
    ever proved dead by its pids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip().replace("-", "")[:8]
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    digits = "".join(c for c in ns if c.isdigit())
    return f"{boot}-{digits}" if boot and digits else ""


def run_id_for(token: str, runner_pid: int, space: str) -> str:
    """A runner's id, ``TOKEN.PID.SPACE``: every owner its workers write starts with it, so a
    later runner in the same process space can prove the whole run dead (``orphans_here``)."""
    return f"{token}.{runner_pid}.{space}" if space else token


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_space(owner: str) -> str | None:
    """The process space in ``owner``'s run id; None for owners written without one."""
    parts = owner.partition("/")[0].split(".")
    return parts[2] if len(parts) == 3 and parts[2] else None


def _parse_owner(owner: str, space: str) -> tuple[int, int] | None:
    """(runner pid, worker pid) of ``owner`` when its run is in process space ``space``."""
    run, _, tag = owner.partition("/")
    parts = run.split(".")
    worker = tag.rpartition(":")[2]
    if not space or len(parts) != 3 or parts[2] != space:
        return None
    if not (parts[1].isdigit() and worker.isdigit()):
        return None
    return int(parts[1]), int(worker)


def worker_alive_here(owner: str, space: str) -> bool | None:
    """Whether ``owner``'s worker process is alive, when it ran in this process space; None
    when that cannot be told from here (another machine or container, an older owner)."""
    pids = _parse_owner(owner, space)
    return None if pids is None else pid_alive(pids[1])


def dead_here(owner: str, space: str) -> str | None:
    """Why ``owner`` (``TOKEN.RUNNER_PID.SPACE/HOST:WORKER_PID``) is provably gone: its run's
    process space is ``space`` and neither its runner nor its worker pid is alive. None when that
    cannot be proved (another machine or container, an older owner format, or a pid alive, which
    may be a recycled one: then the trial is left, never wrongly failed)."""
    pids = _parse_owner(owner, space)
    if pids is None:
        return None
    runner_pid, worker_pid = pids
    if pid_alive(runner_pid) or pid_alive(worker_pid):
        return None
    return f"its runner (pid {runner_pid}) and worker (pid {worker_pid}) are gone from this machine"


def fail_orphans_here(ostudy: optuna.Study, max_retry: int, space: str | None = None) -> list[int]:
    """Fail and re-queue the RUNNING trials of runs killed whole on this machine (``dead_here``).
    What a heartbeat does on a database, for the journal file, which has none: a re-run of the
    command after the runner was killed with its workers gets their trials back."""
    space = process_space() if space is None else space
    failed = []
    for t in raw_trials(ostudy):
        owner = owner_of(t)
        why = dead_here(owner, space) if owner else None
        if why and fail_trial(ostudy, t._trial_id, f"worker gone: {why}", max_retry, owner=owner):
            failed.append(t.number)
    return failed


# A RUNNING trial that a cnnopt worker claimed but nobody can prove is theirs (two claims stand:
# a loser died or stalls before saying it lost, and the winner died before writing its owner)
# is failed by any runner once it is this old: a live winner writes its owner within its storage
# retries (RETRY_SECONDS) or gives up and stops, so by then nobody is running it. Generous, as the
# trial's start time comes from another machine's clock.
ABANDONED_SECONDS = 2 * RETRY_SECONDS + GRACE_PERIOD


def abandoned_trials(ostudy: optuna.Study, age: float = ABANDONED_SECONDS) -> list:
    """RUNNING trials with two or more standing claims of cnnopt workers and no owner written,
    older than ``age``. (Trials of plain Optuna clients are left to Optuna's heartbeats.)"""
    import datetime

    out = []
    for t in raw_trials(ostudy):
        if t.system_attrs.get(OWNER_KEY) or not any(
            k.startswith(CLAIM_PREFIX) for k in t.system_attrs
        ):
            continue
        start = t.datetime_start
        if start is None:
            continue
        now = datetime.datetime.now(start.tzinfo)
        # two standing claims: the ambiguous case. (One: provably its owner's, whose runner
        # fails it; none: a plain Optuna client won it, Optuna's heartbeats are its judge.)
        if (now - start).total_seconds() > age and len(claimants(t)) >= 2:
            out.append(t)
    return out


def fail_abandoned(ostudy: optuna.Study, max_retry: int, age: float = ABANDONED_SECONDS) -> list:
    failed = []
    for t in abandoned_trials(ostudy, age):
        reason = f"claimed by {sorted(claimants(t)) or 'a worker'} and left unowned for {age:.0f} s"
        if fail_trial(ostudy, t._trial_id, reason, max_retry):
            failed.append(t.number)
    return failed
