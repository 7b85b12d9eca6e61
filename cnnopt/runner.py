"""Run a study with N worker processes sharing one storage.

The runner (the `cnnopt run` process) creates the study once (optuna#1092: concurrent first
creation races), then spawns workers. Each worker loads the study file and its dataset once, and
runs trials until the runner's trial budget is spent, the timeout passes, or it is told to stop.
The budget is a shared counter of *tickets*: a worker takes one before each trial, so
``--n-trials 6`` gives exactly 6 new trials however the workers race.

The runner watches its workers. A worker that dies (crash, SIGKILL, OOM-killer) leaves a RUNNING
trial behind; the runner marks it FAIL with the reason, re-enqueues its params (up to the study's
``retry_failed``), gives the ticket back and starts a replacement worker. For RDB storages Optuna's
heartbeats do the same for workers on other machines, and the runner calls ``fail_stale_trials``
periodically so that nothing waits for the next trial to start.

Several runners (one per machine or container) may share one study. Each has a random run id,
and each trial carries its owner, ``RUN_ID/HOST:PID`` of the worker running it, from the moment
it is RUNNING (``cnnopt.storage._OwnedTrials``). A runner fails only trials it can prove are its
own: owned by one of *its* workers that it saw die. It never fails another runner's trial, however
late that runner is in writing anything.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import socket
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnopt.artifacts import USER_ATTR as ARTIFACTS_ATTR
from cnnopt.artifacts import TrialArtifacts, open_store, png_unavailable, resolve_location
from cnnopt.dedup import SpaceGrid
from cnnopt.devices import bind_worker, plan_devices
from cnnopt.errors import CnnoptError, StorageError, TrialFailed
from cnnopt.storage import (
    CLAIM_PREFIX,
    GRACE_PERIOD,
    OWNER_KEY,
    RETRY_OWED_KEY,
    RETRY_SECONDS,
    RetryStaleTrialCallback,
    claimants,
    get_storage,
    heartbeat_settings,
    is_file_storage,
    mask_url,
    owner_of,
    resolve_url,
)
from cnnopt.study import WARM_START, Study

log = logging.getLogger("cnnopt")


@dataclass
class RunOptions:
    workers: int = 1
    n_trials: int | None = None  # trials to add; None: the study file's n_trials
    timeout: float | None = None
    storage: str | None = None
    device: str = "auto"
    progress: bool = True


@dataclass
class WorkerSpec:
    index: int
    device: str
    threads: int
    sampler_seed: int


@dataclass
class RunSummary:
    study_name: str
    storage: str
    new_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any] | None
    best_number: int | None
    seconds: float
    worker_deaths: int = 0
    interrupted: bool = False
    events: list[dict] = field(default_factory=list)
    exhausted: str | None = None  # why the run stopped early: no untried configuration left
    pareto: bool = False  # a Pareto study: a front, no single best trial


# -- devices (which GPU each worker uses: cnnopt.devices) -----------------------------------------


def threads_per_worker(devices: list[str]) -> int:
    """CPU workers split the cores between them (N workers x all cores would oversubscribe)."""
    cpu_workers = sum(1 for d in devices if d == "cpu")
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return max(1, cores // max(cpu_workers, 1)) if cpu_workers else 1


# -- study creation and repair -------------------------------------------------------------------


def open_study(study: Study, url: str, create: bool = True) -> optuna.Study:
    """Create-or-load the study. Several `cnnopt run` processes (one per docker container, or
    per machine) may create it at the same moment (optuna#1092): the loser of that race loads the
    winner's study instead of failing."""
    storage = get_storage(url, retry_failed=study.settings.retry_failed)
    try:
        if create:
            try:
                ostudy = optuna.create_study(
                    storage=storage,
                    study_name=study.name,
                    directions=study.directions,
                    sampler=study.make_sampler(),
                    pruner=study.make_pruner(),
                    load_if_exists=True,
                )
            except optuna.exceptions.DuplicatedStudyError:
                create = False  # created by another process between our check and our insert
        if not create:
            ostudy = optuna.load_study(
                study_name=study.name,
                storage=storage,
                sampler=study.make_sampler(),
                pruner=study.make_pruner(),
            )
    except (StorageError, TrialFailed):
        raise
    except KeyError:
        raise StorageError(f"no study {study.name!r} in {mask_url(url)}") from None
    except Exception as e:  # noqa: BLE001
        msg = (str(e).strip().splitlines() or [""])[0]
        raise StorageError(f"{mask_url(url)}: {type(e).__name__}: {mask_url(msg)}") from None
    stored = [d.name.lower() for d in ostudy.directions]
    if stored != study.directions:  # e.g. a study file turned into a Pareto study since
        raise StorageError(
            f"study {study.name!r} in {mask_url(url)} has directions {stored}, but "
            f"{study.path} asks for {study.directions}: run it under another --study-name"
        )
    if create and study.settings.enqueue and not ostudy.get_trials(deepcopy=False):
        # Warm start, once, when the study is new: the report's own configuration goes first,
        # so the search starts from what the user already had and can only improve on it.
        # Tagged WARM_START: the objective trains them to the end (never pruned), see there.
        for params in study.settings.enqueue:
            ostudy.enqueue_trial(params, user_attrs={WARM_START: True}, skip_if_exists=True)
    attrs = ostudy.user_attrs
    recorded = [("study_file", study.describe()), ("metric", study.settings.metric)]
    location = resolve_location(study.settings.artifacts, study.name)
    if location is not None:
        open_store(location)  # a bad location (or s3:// without boto3) stops here, in one line
        recorded.append((ARTIFACTS_ATTR, location))  # where dashboard/export/train look
    for key, value in recorded:
        if attrs.get(key) != value:
            ostudy.set_user_attr(key, value)
    return ostudy


def owner_name(run_id: str, tag: str) -> str:
    """The owner a worker writes on its trials: its runner's run id and its ``host:pid`` tag."""
    return f"{run_id}/{tag}"


def _backend(ostudy: optuna.Study) -> Any:
    """The storage under Optuna's _CachedStorage (which optuna.load_study puts around RDB)."""
    from optuna.storages._cached_storage import _CachedStorage

    storage = ostudy._storage
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def _raw_trials(ostudy: optuna.Study, states=(TrialState.RUNNING,)) -> list:
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
        for t in _raw_trials(ostudy, states=(TrialState.FAIL,))
        if t.system_attrs.get(RETRY_OWED_KEY)
    ]
    if not failed:
        return []
    everything = _raw_trials(ostudy, states=None)
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
    for t in sorted(_raw_trials(ostudy, states=None), key=lambda t: t.number):
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
    for t in _raw_trials(ostudy):
        owner = owner_of(t)
        if owner in owners:
            why = reason[owner] if isinstance(reason, dict) else reason
            if fail_trial(ostudy, t._trial_id, why, max_retry, owner=owner):
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
    for t in _raw_trials(ostudy):
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


# -- the worker process --------------------------------------------------------------------------


# Each worker slot has an "in flight" flag in a shared array: ASKING when its worker takes a
# ticket, TAGGED once its trial exists (its id in the slot's entry of ``trial_ids``), IDLE when
# that trial has ended (complete, pruned, failed, or interrupted and re-queued). A worker that dies
# with the flag set held a ticket; the runner gives it back (once) unless the trial it held has
# finished (Optuna recorded it before the worker died, just before it reset its flag): that
# ticket bought a trial. A worker that dies ASKING may leave a RUNNING trial it never saw: the
# trial carries the worker as its owner all the same (cnnopt.storage._OwnedTrials).
IDLE, ASKING, TAGGED = 0, 1, 2


def _claim_slot(tickets, inflight, slot: int, target: int) -> bool:
    with tickets.get_lock():
        if tickets.value >= target:
            return False
        tickets.value += 1
        inflight[slot] = ASKING
        return True


def _end_slot(inflight, slot: int) -> None:
    inflight[slot] = IDLE


def _reclaim_slot(tickets, inflight, slot: int) -> bool:
    """The worker in ``slot`` died: give its in-flight ticket back. True if there was one."""
    with tickets.get_lock():
        if inflight[slot]:
            inflight[slot] = IDLE
            tickets.value -= 1
            return True
        return False


def worker_main(
    spec: WorkerSpec,
    study_path: str,
    overrides: dict[str, Any],
    url: str,
    tickets,
    target: int,
    deadline: float | None,
    stop,
    events,
    inflight=None,
    run_id: str = "",
    trial_ids=None,
) -> None:
    # Ctrl-C reaches the whole process group; the runner decides, and tells us through `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        _work(
            spec, study_path, overrides, url, tickets, target, deadline, stop, events, inflight,
            run_id, trial_ids,
        )  # fmt: skip
    except (CnnoptError, optuna.exceptions.StorageInternalError) as err:
        # A user error that no retry can fix (data missing, a bad value in the space, storage
        # gone): tell the runner, which stops every worker and says it in one line.
        stop.set()
        events.put({"event": "fatal", "worker": spec.index, "message": mask_url(str(err))})
    events.put({"event": "exit", "worker": spec.index})


def run_trial(ostudy: optuna.Study, objective: Any, callbacks: list, device: Any = None) -> None:
    """One trial, then its memory back: a trial's failure (TrialFailed, out of memory included)
    ends the trial, not the worker."""
    try:
        ostudy.optimize(
            objective, n_trials=1, catch=(TrialFailed,), callbacks=callbacks, gc_after_trial=False
        )
    finally:
        release_memory(device if device is not None else getattr(objective, "device", None))


def release_memory(device: Any = None) -> None:
    """Give a finished trial's memory back before the next one, so that workers sharing a GPU
    are not starved by one worker's peak. A pruned or failed trial's exception, which Optuna
    keeps while it records the trial, holds the frames of the training loop (model, optimizer,
    scheduler, activations) in a reference cycle with Optuna's own frame: only the cycle
    collector frees it. Then the CUDA allocator's cached blocks go back to the driver."""
    import gc

    gc.collect()
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        from cnnopt.objective import is_cuda_context_lost

        try:
            torch.cuda.empty_cache()
        except RuntimeError as e:  # after a sticky CUDA error every CUDA call fails: the
            if not is_cuda_context_lost(e):  # trial's own CudaContextLost says it, not this
                raise


def _work(
    spec, study_path, overrides, url, tickets, target, deadline, stop, events, inflight,
    run_id="", trial_ids=None,
):  # fmt: skip
    """The worker's loop: load the study file and storage, then trials until the budget is spent."""
    device = bind_worker(spec.device)  # before torch initialises CUDA: only this GPU is visible
    import torch

    from cnnopt.objective import Objective, worker_tag
    from cnnopt.train import CudaContextLost, Interrupted

    torch.set_num_threads(spec.threads)
    study = Study.load(study_path, overrides)
    # a worker started while the database restarts waits for it (a CLI command would not)
    storage = get_storage(
        url, retry_failed=study.settings.retry_failed, connect_retry=RETRY_SECONDS
    )
    tag = worker_tag()
    owner = owner_name(run_id or uuid.uuid4().hex[:12], tag)
    if hasattr(storage, "raw_trials"):
        storage.owner = owner  # every trial this worker creates or claims says so (see there)
    ostudy = optuna.load_study(
        study_name=study.name,
        storage=storage,
        sampler=study.make_sampler(spec.sampler_seed),
        pruner=study.make_pruner(),
    )
    current: dict[str, int] = {}

    def emit(event: dict) -> None:
        if event["event"] == "start":
            current["trial"] = event["trial"]
        events.put({**event, "worker": spec.index, "pid": os.getpid()})

    checkpoints = None
    if study.settings.checkpoint:
        from cnnopt.checkpoint import CheckpointStore

        checkpoints = CheckpointStore(study.name, study.settings.metric, study.settings.direction)

    def on_trial_end(_study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if checkpoints is not None and t.state.is_finished():
            checkpoints.discard(t)  # recorded as ended: it will not be resumed
        events.put(
            {
                "event": "end",
                "worker": spec.index,
                "trial": t.number,
                "state": t.state.name,
                # the metric (a Pareto study's trial has several values: the metric is first)
                "value": t.values[0] if t.values else None,
                "reason": t.user_attrs.get("fail_reason"),
                "over_budget": t.user_attrs.get("over_budget"),
                "duplicate_of": t.user_attrs.get("duplicate_of"),
            }
        )

    location = resolve_location(study.settings.artifacts, study.name)
    artifacts = location and TrialArtifacts(
        location, study.settings.metric, png=png_unavailable() is None
    )
    objective = Objective(
        study,
        device,
        should_stop=stop.is_set,
        emit=emit,
        checkpoints=checkpoints,
        device_name=spec.device,
        artifacts=artifacts,
    )
    grid = SpaceGrid(study)  # a fully discrete space can run out of untried configurations
    slot = spec.index
    if inflight is None:  # called without a runner (tests): a private flag
        inflight = [IDLE] * (slot + 1)
    if trial_ids is None:
        trial_ids = [-1] * (slot + 1)

    def tagged_objective(trial: optuna.Trial) -> float:
        # the trial is ours (its owner says so since it became RUNNING); the runner learns its
        # id, to tell a finished trial's ticket from one to give back should this worker die
        trial_ids[slot] = trial._trial_id
        inflight[slot] = TAGGED
        _hold_for_tests()
        trial.set_user_attr("worker", tag)
        return objective(trial)

    events.put(
        {"event": "ready", "worker": spec.index, "pid": os.getpid(), "tag": tag, "owner": owner}
    )
    while (
        not stop.is_set()
        and (deadline is None or time.time() < deadline)
        and not _space_used_up(grid, ostudy, spec.index, events)
        and _claim_slot(tickets, inflight, slot, target)
    ):
        current.clear()
        try:
            run_trial(ostudy, tagged_objective, [on_trial_end], device=objective.device)
            _end_slot(inflight, slot)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as e:
            # Another process ended our trial (failed it as stale while this worker stalled, and
            # re-queued its params): Optuna's tell then finds it finished. Not this worker's
            # fault nor the end of it: one line, the ticket back (the re-queued run uses it), and
            # on with the next trial.
            if isinstance(e, ValueError) and "Cannot tell a" not in str(e):
                raise
            number = current.get("trial", "?")
            log.warning(
                "worker %d: trial %s was ended by another process; going on (%s)",
                spec.index, number, str(e).splitlines()[0] if str(e) else type(e).__name__,
            )  # fmt: skip
            _reclaim_slot(tickets, inflight, slot)
        except Interrupted:
            # Optuna has marked the trial FAIL; give its params back to the queue and the ticket
            # back to the budget, so re-running the same command resumes exactly here.
            if "trial" in current:
                trial_id = ostudy._storage.get_trial_id_from_study_id_trial_number(
                    ostudy._study_id, current["trial"]
                )
                requeue(ostudy, trial_id)
            _reclaim_slot(tickets, inflight, slot)
            if "trial" in current:
                t = ostudy._storage.get_trial(trial_id)
                events.put(
                    {
                        "event": "end",
                        "worker": spec.index,
                        "trial": t.number,
                        "state": "INTERRUPTED",
                        "value": None,
                        "reason": "interrupted",
                    }
                )
            break
        except CudaContextLost as lost:
            number = _cuda_context_lost(
                ostudy, lost, study.settings.retry_failed, tickets, inflight, slot
            )
            if number is not None:
                events.put(
                    {"event": "end", "worker": spec.index, "trial": number, "state": "FAIL",
                     "value": None, "reason": lost.reason}
                )  # fmt: skip
            raise SystemExit(EXIT_CUDA_CONTEXT_LOST) from None


# The exit code of a worker whose CUDA context was lost; the runner starts a new one in its place.
EXIT_CUDA_CONTEXT_LOST = 75


def _cuda_context_lost(ostudy, lost, retry_failed: int, tickets, inflight, slot: int) -> int | None:
    """After a sticky CUDA error: Optuna has marked the trial FAIL with its reason. Its params go
    back to the queue within the study's retry budget (the GPU failed, maybe not the config; a
    config that always crashes the GPU stops after ``retry_failed`` tries), with the ticket back
    to the budget when they do. This process's context is dead: the worker then exits."""
    requeued, number = False, None
    if lost.trial_id is not None:
        t = ostudy._storage.get_trial(lost.trial_id)
        requeued = len(t.system_attrs.get("retry_history", [])) < retry_failed
        RetryStaleTrialCallback(max_retry=retry_failed)(ostudy, t)
        number = t.number
    if requeued:
        _reclaim_slot(tickets, inflight, slot)
    else:
        _end_slot(inflight, slot)
    return number


def _space_used_up(grid: SpaceGrid, ostudy: optuna.Study, worker: int, events) -> bool:
    """True (and tell the runner) when every configuration is trained: a further trial could only
    copy one. The worker just stops taking trials; the others finish the ones they hold."""
    message = grid.exhausted(ostudy)
    if message:
        events.put({"event": "exhausted", "worker": worker, "message": message})
    return message is not None


def _hold_for_tests() -> None:
    """Fault-test hook: while the file named by $CNNOPT_TEST_HOLD_BEFORE_TAG exists, wait between
    study.ask() and tagging the trial, so a test can kill a worker inside that window."""
    path = os.environ.get("CNNOPT_TEST_HOLD_BEFORE_TAG")
    while path and os.path.exists(path):
        time.sleep(0.05)


# -- the runner ----------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    return mask_url((str(e).strip().splitlines() or [type(e).__name__])[0])


class Runner:
    def __init__(self, study: Study, overrides: dict[str, Any], options: RunOptions):
        self.study = study
        self.overrides = overrides
        self.opt = options
        self.url = resolve_url(options.storage, study.name)

    def run(self) -> RunSummary:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        t0 = time.time()
        n_new = self.opt.n_trials if self.opt.n_trials is not None else self.study.settings.n_trials
        n_workers = max(1, min(self.opt.workers, n_new)) if n_new else 0
        # a GPU that is not there is a one-line error before anything is created or started
        devices = plan_devices(self.opt.device, n_workers)
        ostudy = open_study(self.study, self.url)
        if n_workers and resolve_location(self.study.settings.artifacts, self.study.name):
            reason = png_unavailable()  # asked here once: the workers then skip PNG quietly
            if reason:
                log.warning("learning curves are kept as HTML only, no PNG: %s", reason)
        n_before = len(ostudy.get_trials(deepcopy=False))
        timeout = self.opt.timeout if self.opt.timeout is not None else self.study.settings.timeout
        deadline = t0 + timeout if timeout else None
        # no untried configuration left (found here for a resumed study, then by the workers):
        # a used-up study starts no worker
        exhausted = [m for m in [SpaceGrid(self.study).exhausted(ostudy)] if m]
        if exhausted:
            n_workers, devices = 0, []
        threads = threads_per_worker(devices)

        ctx = mp.get_context("spawn")  # fork after torch/CUDA init is unsafe
        stop = ctx.Event()
        tickets = ctx.Value("i", 0)
        inflight = ctx.Array("b", max(n_workers, 1))  # see _claim_slot; shares tickets' lock
        trial_ids = ctx.Array("i", [-1] * max(n_workers, 1))  # the trial each slot holds
        events = ctx.Queue()
        procs: dict[int, mp.process.BaseProcess] = {}
        # this run's id: the owner of every trial its workers run is RUN_ID/HOST:PID
        run_id = uuid.uuid4().hex[:12]
        host = socket.gethostname()
        dead: dict[str, str] = {}  # owners of this run's dead workers -> why they died
        deaths = 0
        spawned = 0

        def spawn(i: int) -> None:
            nonlocal spawned
            spec = WorkerSpec(
                i, devices[i], threads, self.study.settings.seed + 1000 * spawned + n_before
            )
            spawned += 1
            p = ctx.Process(
                target=worker_main,
                args=(
                    spec,
                    str(self.study.path),
                    self.overrides,
                    self.url,
                    tickets,
                    n_new,
                    deadline,
                    stop,
                    events,
                    inflight,
                    run_id,
                    trial_ids,
                ),
                name=f"cnnopt-worker-{i}",
            )
            p.start()
            procs[i] = p

        interrupted = {"flag": False}

        def on_signal(signum, _frame):
            interrupted["flag"] = True
            stop.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        from cnnopt.progress import RunDisplay

        display = RunDisplay(self.study, self.url, n_workers, n_new, enabled=self.opt.progress)
        log_events: list[dict] = []
        fatal: list[str] = []  # one-line errors of workers that stopped the run
        last_stale_check = time.time()
        # The proxy client calls a trial stale once it has seen its heartbeat unchanged for the
        # grace period, and restarts that watch after a gap of half of it: check more often.
        stale_every = min(30.0, heartbeat_settings()[1] / 4)
        retry = self.study.settings.retry_failed
        try:
            for i in range(n_workers):
                spawn(i)
            with display:
                while procs:
                    # all waiting events first, then always the health checks (a steady stream
                    # of events must not starve them)
                    try:
                        ev = events.get(timeout=0.5)
                        while True:
                            if ev["event"] == "fatal":
                                fatal.append(ev["message"])
                            elif ev["event"] == "exhausted":
                                exhausted.append(ev["message"])
                            log_events.append(ev)
                            display.update(ev)
                            ev = events.get_nowait()
                    except queue_mod.Empty:
                        pass
                    for i, p in list(procs.items()):
                        if p.is_alive():
                            continue
                        p.join()
                        del procs[i]
                        if p.exitcode == 0:
                            continue
                        deaths += 1
                        owner = owner_name(run_id, f"{host}:{p.pid}")
                        reason = f"worker {i} (pid {p.pid}) died with exit code {p.exitcode}"
                        dead[owner] = reason
                        spent = self._ticket_spent(ostudy, inflight, trial_ids, i)
                        failed = self._fail_dead(ostudy, {owner: reason}, retry)
                        if spent:  # its trial finished before it died: that ticket bought it
                            _end_slot(inflight, i)
                        _reclaim_slot(tickets, inflight, i)
                        trial_ids[i] = -1
                        display.update(
                            {"event": "death", "worker": i, "reason": reason, "trials": failed}
                        )
                        log.warning(
                            "%s; failed trials %s and re-queued their params", reason, failed
                        )
                        if not stop.is_set() and tickets.value < n_new and deaths <= 3 * n_workers:
                            spawn(i)
                    if time.time() - last_stale_check > stale_every:
                        if not is_file_storage(self.url):
                            self._fail_stale(ostudy)
                        self._fail_abandoned(ostudy, retry)
                        last_stale_check = time.time()
        finally:
            stop.set()
            end = time.time() + 15
            for p in procs.values():
                p.join(timeout=max(0.1, end - time.time()))
            for i, p in procs.items():
                if p.is_alive():
                    p.kill()  # SIGTERM only sets `stop` in a worker, which it ignored
                    p.join(timeout=5)
                    # its trial must not stay RUNNING (the journal file has no heartbeats)
                    owner = owner_name(run_id, f"{host}:{p.pid}")
                    dead[owner] = (
                        f"worker {i} (pid {p.pid}) did not stop within 15 s and was killed"
                    )
                    self._fail_dead(ostudy, {owner: dead[owner]}, retry)
            for s, h in old.items():
                signal.signal(s, h)
        # events the last workers sent just before exiting
        while True:
            try:
                ev = events.get(timeout=0.2)
            except queue_mod.Empty:
                break
            log_events.append(ev)
            display.update(ev)
            if ev["event"] == "fatal":
                fatal.append(ev["message"])
            elif ev["event"] == "exhausted":
                exhausted.append(ev["message"])
        if dead:
            # once more: a dead worker's last write (a trial creation whose commit was still on
            # its way when the worker died) may have landed after the runner first looked
            late = self._fail_dead(ostudy, dead, retry)
            if late:
                log.warning("failed trials %s, left RUNNING by a worker that died", late)
        if fatal:
            raise CnnoptError(fatal[0])
        if not is_file_storage(self.url):
            # the last workers are done: fail whatever went stale, so nothing stays RUNNING
            self._fail_stale(ostudy)
        summary = self._summary(
            ostudy, n_before, time.time() - t0, deaths, interrupted["flag"], log_events
        )
        summary.exhausted = exhausted[0] if exhausted else None
        return summary

    @staticmethod
    def _ticket_spent(ostudy: optuna.Study, inflight, trial_ids, slot: int) -> bool:
        """Whether the dead worker in ``slot`` held a trial that had already finished (Optuna
        recorded it; the worker died before resetting its flag): then its ticket is spent, and
        giving it back would run one trial more than asked for."""
        if inflight[slot] != TAGGED or trial_ids[slot] < 0:
            return False
        try:
            return ostudy._storage.get_trial(trial_ids[slot]).state != TrialState.RUNNING
        except Exception:  # noqa: BLE001 - cannot tell: give the ticket back (as before)
            return False

    @staticmethod
    def _fail_dead(ostudy: optuna.Study, dead: dict[str, str], retry: int) -> list[int]:
        """Fail the RUNNING trials of this run's dead workers (by owner), and re-queue them."""
        try:
            failed = fail_trials_of(ostudy, set(dead), dead, retry)
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run; next tick
            log.warning("failing a dead worker's trials failed: %s", _first_line(e))
            return []
        return failed

    @staticmethod
    def _fail_abandoned(ostudy: optuna.Study, retry: int) -> None:
        try:
            failed = fail_abandoned(ostudy, retry)
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run
            log.warning("checking for abandoned trials failed: %s", _first_line(e))
            return
        if failed:
            log.warning("failed trials %s: claimed by workers that died, owned by nobody", failed)
        try:
            requeued = requeue_owed(ostudy, retry)
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run
            log.warning("checking for owed retries failed: %s", _first_line(e))
            return
        if requeued:
            log.warning(
                "re-queued trials %s, failed by a process that died before it could", requeued
            )

    @staticmethod
    def _fail_stale(ostudy: optuna.Study) -> None:
        try:
            optuna.storages.fail_stale_trials(ostudy)
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run
            log.warning("checking for stale trials failed: %s", _first_line(e))

    def _summary(self, ostudy, n_before, seconds, deaths, interrupted, events) -> RunSummary:
        trials = ostudy.get_trials(deepcopy=False)
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        best = None
        try:
            best = ostudy.best_trial
        except (ValueError, RuntimeError):  # none complete yet; a Pareto study has a front
            pass
        return RunSummary(
            study_name=self.study.name,
            storage=self.url,
            # trials that ended in this run (a resumed study's re-queued trials count here too)
            new_trials=sum(
                1 for e in events if e["event"] == "end" and e["state"] != "INTERRUPTED"
            ),
            states=states,
            best_value=best.value if best else None,
            best_params=best.params if best else None,
            best_number=best.number if best else None,
            seconds=seconds,
            worker_deaths=deaths,
            interrupted=interrupted,
            events=events,
            pareto=self.study.multi_objective,
        )
