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
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import socket
import time
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
    RETRY_SECONDS,
    RetryStaleTrialCallback,
    get_storage,
    heartbeat_settings,
    is_file_storage,
    mask_url,
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
                    direction=study.settings.direction,
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


def fail_trial(ostudy: optuna.Study, trial_id: int, reason: str, max_retry: int) -> None:
    """Mark a RUNNING trial FAIL with its reason and re-enqueue its params (Optuna's own retry)."""
    storage = ostudy._storage
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # it finished (or another process failed it) in the meantime
    if max_retry > 0:
        RetryStaleTrialCallback(max_retry=max_retry)(ostudy, storage.get_trial(trial_id))


def requeue(ostudy: optuna.Study, trial_id: int) -> None:
    """Re-queue an interrupted trial's params, however often (an interrupt is not the trial's
    fault); ``system_attrs['failed_trial']`` lets the re-run find the trial's checkpoint."""
    RetryStaleTrialCallback(max_retry=None)(ostudy, ostudy._storage.get_trial(trial_id))


def fail_trials_of(ostudy: optuna.Study, worker: str, reason: str, max_retry: int) -> list[int]:
    failed = []
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker:
            fail_trial(ostudy, t._trial_id, reason, max_retry)
            failed.append(t.number)
    return failed


def untagged_running(ostudy: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if "worker" not in t.user_attrs
    ]


# -- the worker process --------------------------------------------------------------------------


# Each worker slot has an "in flight" flag in a shared array: ASKING when its worker takes a
# ticket, TAGGED once the trial it asked for carries the worker's tag, IDLE when that trial has
# ended (complete, pruned, failed, or interrupted and re-queued). A worker that dies with the flag
# set held a ticket that bought no finished trial: the runner gives it back (once), whether or not
# the trial got as far as the storage. One that dies ASKING may leave a RUNNING trial that carries
# no tag (it died inside study.ask() or just after): see Runner._fail_orphans.
IDLE, ASKING, TAGGED = 0, 1, 2
# How long an untagged RUNNING trial must stay untagged before the runner fails it: a live worker
# (of another `cnnopt run` sharing the storage) tags its new trial within milliseconds.
ORPHAN_SETTLE_SECONDS = 5.0


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
) -> None:
    # Ctrl-C reaches the whole process group; the runner decides, and tells us through `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        _work(spec, study_path, overrides, url, tickets, target, deadline, stop, events, inflight)
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

        torch.cuda.empty_cache()


def _work(spec, study_path, overrides, url, tickets, target, deadline, stop, events, inflight):
    """The worker's loop: load the study file and storage, then trials until the budget is spent."""
    device = bind_worker(spec.device)  # before torch initialises CUDA: only this GPU is visible
    import torch

    from cnnopt.objective import Objective, worker_tag
    from cnnopt.train import Interrupted

    torch.set_num_threads(spec.threads)
    study = Study.load(study_path, overrides)
    # a worker started while the database restarts waits for it (a CLI command would not)
    storage = get_storage(
        url, retry_failed=study.settings.retry_failed, connect_retry=RETRY_SECONDS
    )
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
        if checkpoints is not None and t.state in (TrialState.PRUNED, TrialState.FAIL):
            checkpoints.discard(t)  # final: it will not be resumed
        events.put(
            {
                "event": "end",
                "worker": spec.index,
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "reason": t.user_attrs.get("fail_reason"),
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
    tag = worker_tag()

    def tagged_objective(trial: optuna.Trial) -> float:
        # Tag first, then say so: until the slot reads TAGGED the runner treats an untagged
        # RUNNING trial as possibly this worker's (see Runner._fail_orphans).
        _hold_for_tests()
        trial.set_user_attr("worker", tag)
        inflight[slot] = TAGGED
        return objective(trial)

    events.put({"event": "ready", "worker": spec.index, "pid": os.getpid(), "tag": tag})
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
        events = ctx.Queue()
        procs: dict[int, mp.process.BaseProcess] = {}
        tags: dict[int, str] = {}
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
        # untagged RUNNING trials seen when a worker died before tagging its trial -> reason
        orphans: dict[int, str] = {}
        orphans_seen = 0.0
        last_stale_check = time.time()
        # The proxy client calls a trial stale once it has seen its heartbeat unchanged for the
        # grace period, and restarts that watch after a gap of half of it: check more often.
        stale_every = min(30.0, heartbeat_settings()[1] / 4)
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
                            if ev["event"] == "ready":
                                tags[ev["pid"]] = ev["tag"]
                            elif ev["event"] == "fatal":
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
                        asking = inflight[i] == ASKING
                        tag = tags.get(p.pid, f"{socket.gethostname()}:{p.pid}")
                        reason = f"worker {i} (pid {p.pid}) died with exit code {p.exitcode}"
                        failed = fail_trials_of(
                            ostudy, tag, reason, self.study.settings.retry_failed
                        )
                        if asking and not failed:
                            for t in untagged_running(ostudy):
                                orphans.setdefault(t._trial_id, reason)
                            orphans_seen = time.time()
                        _reclaim_slot(tickets, inflight, i)
                        display.update(
                            {"event": "death", "worker": i, "reason": reason, "trials": failed}
                        )
                        log.warning(
                            "%s; failed trials %s and re-queued their params", reason, failed
                        )
                        if not stop.is_set() and tickets.value < n_new and deaths <= 3 * n_workers:
                            spawn(i)
                    if (
                        orphans
                        and time.time() - orphans_seen > ORPHAN_SETTLE_SECONDS
                        and not any(inflight[j] == ASKING for j in procs)
                    ):
                        self._fail_orphans(ostudy, orphans)
                    if (
                        not is_file_storage(self.url)
                        and time.time() - last_stale_check > stale_every
                    ):
                        self._fail_stale(ostudy)
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
                    tag = tags.get(p.pid, f"{socket.gethostname()}:{p.pid}")
                    reason = f"worker {i} (pid {p.pid}) did not stop within 15 s and was killed"
                    fail_trials_of(ostudy, tag, reason, self.study.settings.retry_failed)
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
        if orphans:  # no worker of this run is left to own them
            time.sleep(max(0.0, orphans_seen + ORPHAN_SETTLE_SECONDS - time.time()))
            self._fail_orphans(ostudy, orphans)
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

    def _fail_orphans(self, ostudy: optuna.Study, orphans: dict[int, str]) -> None:
        """Fail the trials a worker left RUNNING without its tag (it died between study.ask() and
        tagging), now that no live worker of this run is between those two steps: each one that
        is still RUNNING and untagged can be nobody's. Without this it would stay RUNNING
        forever: the runner finds a dead worker's trials by tag, and Optuna's heartbeats (RDB
        only) ignore a trial that never sent one."""
        failed = []
        try:
            for trial_id, reason in list(orphans.items()):
                t = ostudy._storage.get_trial(trial_id)
                if t.state == TrialState.RUNNING and "worker" not in t.user_attrs:
                    # re-run an enqueued trial's fixed params; one that sampled nothing has none
                    retry = self.study.settings.retry_failed if t.params else 0
                    fail_trial(ostudy, trial_id, f"{reason} before its trial started", retry)
                    failed.append(t.number)
                del orphans[trial_id]
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run; next tick
            log.warning("failing orphaned trials failed: %s", mask_url(str(e).splitlines()[0]))
        if failed:
            log.warning("failed trials %s, left RUNNING by a worker that died", failed)

    @staticmethod
    def _fail_stale(ostudy: optuna.Study) -> None:
        try:
            optuna.storages.fail_stale_trials(ostudy)
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run
            log.warning("checking for stale trials failed: %s", mask_url(str(e).splitlines()[0]))

    def _summary(self, ostudy, n_before, seconds, deaths, interrupted, events) -> RunSummary:
        trials = ostudy.get_trials(deepcopy=False)
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        best = None
        try:
            best = ostudy.best_trial
        except ValueError:
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
        )
