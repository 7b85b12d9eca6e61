"""Run a study with N worker processes sharing one storage: the supervising process.

The runner (the `cnnopt run` process) creates the study once (optuna#1092: concurrent first
creation races), then spawns workers (``cnnopt.worker``: what runs inside each). Each worker loads
the study file and its dataset once, and runs trials until the runner's trial budget is spent, the
timeout passes, or it is told to stop. The budget is a shared counter of *tickets*: a worker takes
one before each trial, so ``--n-trials 6`` gives exactly 6 new trials however the workers race.

The runner watches its workers. A worker that dies (crash, SIGKILL, OOM-killer) leaves a RUNNING
trial behind; the runner marks it FAIL with the reason, re-enqueues its params (up to the study's
``retry_failed``), gives the ticket back and starts a replacement worker. For RDB storages Optuna's
heartbeats do the same for workers on other machines, and the runner calls ``fail_stale_trials``
periodically so that nothing waits for the next trial to start.

Several runners (one per machine or container) may share one study; who may fail which trial, and
the retry owed, is ``cnnopt.recovery``. This module keeps the supervision: starting workers,
tickets, watching deaths, Ctrl-C and the closing summary.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnopt.artifacts import USER_ATTR as ARTIFACTS_ATTR
from cnnopt.artifacts import open_store, png_unavailable, resolve_location
from cnnopt.dedup import SpaceGrid
from cnnopt.devices import plan_devices
from cnnopt.errors import CnnoptError, StorageError, TrialFailed
from cnnopt.recovery import (
    fail_abandoned,
    fail_orphans_here,
    fail_trials_of,
    process_space,
    requeue_owed,
    run_id_for,
)
from cnnopt.storage import get_storage, heartbeat_settings, is_file_storage, mask_url, resolve_url
from cnnopt.study import WARM_START, Study, trial_source
from cnnopt.worker import TAGGED, WorkerSpec, _end_slot, _reclaim_slot, owner_name, worker_main

log = logging.getLogger("cnnopt")


@dataclass
class RunOptions:
    workers: int = 1
    n_trials: int | None = None  # trials to add; None: the study file's n_trials
    timeout: float | None = None
    storage: str | None = None
    device: str = "auto"
    progress: bool = True
    epoch_budget: int | None = None  # epochs this run may train; None: the study's epoch_budget


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
    best_source: str | None = None  # study.trial_source of the best trial
    worker_deaths: int = 0
    interrupted: bool = False
    events: list[dict] = field(default_factory=list)
    exhausted: str | None = None  # why the run stopped early: nothing untried, or nothing trained
    epochs: int = 0  # epochs this run's workers trained (copies and over-budget proposals: none)
    epoch_budget: int | None = None  # the run's epoch budget, when it had one
    pareto: bool = False  # a Pareto study: a front, no single best trial


# -- the trial budget (tickets) ------------------------------------------------------------------

# The trial count of a run bounded by its epoch budget alone (the budget closes the tickets),
# and the count of a closed ticket counter: far above any trial count, within a C int.
UNBOUNDED = 2**30
CLOSED = 2**31 - 1
# A run bounded by its epoch budget alone ends after this many trials in a row that trained
# nothing (every proposal over a max_params budget, copies of trained configurations, failures
# before the first epoch): such trials cost no epoch, so the budget would never be spent.
UNTRAINED_IN_A_ROW = 100


def _close_tickets(tickets) -> None:
    """No worker may take another ticket, whatever is given back later (a dead worker's ticket
    is given back by decrementing: the counter stays far above any target)."""
    with tickets.get_lock():
        tickets.value = CLOSED


# -- devices (which GPU each worker uses: cnnopt.devices) -----------------------------------------


def threads_per_worker(devices: list[str]) -> int:
    """CPU workers split the cores between them (N workers x all cores would oversubscribe)."""
    cpu_workers = sum(1 for d in devices if d == "cpu")
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return max(1, cores // max(cpu_workers, 1)) if cpu_workers else 1


# -- study creation -----------------------------------------------------------------------------


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


# -- the runner ----------------------------------------------------------------------------------


def read_events(
    pipes: dict[int, Any], timeout: float = 0.0, only: int | None = None, to_end: bool = False
) -> list[dict]:
    """The events waiting in the workers' pipes (``only``: one worker's), after waiting up to
    ``timeout`` for the first. ``to_end``: read a pipe to its end, for a worker that has exited
    (its writing end is closed, so the end comes at once; 5 s of silence count as the end). A
    pipe that ends is closed and dropped from ``pipes``, as is one whose last message was cut
    short by its writer's death."""
    chosen = {i: c for i, c in pipes.items() if only is None or i == only}
    if not chosen:
        if timeout:
            time.sleep(timeout)  # no worker yet, or all ended: wait as the pipes would
        return []
    ready = list(chosen.values())
    if not to_end:
        ready = mp_connection.wait(ready, timeout)
    out: list[dict] = []
    for i, conn in chosen.items():
        if conn not in ready:
            continue
        try:
            while conn.poll(5.0 if to_end else 0):
                out.append(conn.recv())
            if not to_end:
                continue
        except (EOFError, OSError):  # the writer has ended and everything it sent is read
            pass
        conn.close()
        del pipes[i]
    return out


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
        budget = self.opt.epoch_budget or self.study.settings.epoch_budget
        if self.opt.n_trials is not None:
            n_new = self.opt.n_trials
        elif budget:  # the epoch budget bounds the run, not the study's default trial count
            n_new = UNBOUNDED
        else:
            n_new = self.study.settings.n_trials
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
        # each worker's own event pipe, read here (see worker.EventPipe: a worker's death must
        # end only its pipe); a worker's index maps to the pipe of its current process
        pipes: dict[int, Any] = {}
        procs: dict[int, mp.process.BaseProcess] = {}
        # this run's id: the owner of every trial its workers run is RUN_ID/HOST:PID, and RUN_ID
        # holds the runner's pid and process space, so a run killed whole can be proved dead
        run_id = run_id_for(uuid.uuid4().hex[:12], os.getpid(), process_space())
        host = socket.gethostname()
        dead: dict[str, str] = {}  # owners of this run's dead workers -> why they died
        deaths = 0

        def spawn(i: int) -> None:
            spec = WorkerSpec(i, devices[i], threads)
            reader, writer = ctx.Pipe(duplex=False)
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
                    writer,
                    inflight,
                    run_id,
                    trial_ids,
                ),
                name=f"cnnopt-worker-{i}",
            )
            p.start()
            writer.close()  # the worker holds the only writing end: its exit closes the pipe
            procs[i] = p
            pipes[i] = reader

        interrupted = {"flag": False}

        def on_signal(signum, _frame):
            interrupted["flag"] = True
            stop.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        from cnnopt.progress import RunDisplay

        display = RunDisplay(
            self.study, self.url, n_workers, None if n_new == UNBOUNDED else n_new,
            enabled=self.opt.progress, epoch_budget=budget,
        )  # fmt: skip
        log_events: list[dict] = []
        fatal: list[str] = []  # one-line errors of workers that stopped the run
        epochs = {"trained": 0, "closed": False, "untrained_in_a_row": 0}
        trained_trials: set[int] = set()  # the trials that sent an epoch event

        def close() -> None:  # this run starts no more trials (see _close_tickets)
            _close_tickets(tickets)
            epochs["closed"] = True

        def handle(ev: dict) -> None:
            if ev["event"] == "fatal":
                fatal.append(ev["message"])
            elif ev["event"] == "exhausted":
                exhausted.append(ev["message"])
            elif ev["event"] == "epoch":
                epochs["trained"] += 1
                trained_trials.add(ev.get("trial"))
                if budget and epochs["trained"] >= budget and not epochs["closed"]:
                    # no more tickets: no worker starts another trial, and none is replaced;
                    # the trials in progress finish (their epochs are trained work, not waste)
                    close()
                    log.info("epoch budget spent (%d epochs): no new trials", budget)
            elif ev["event"] == "end" and n_new == UNBOUNDED:
                untrained = ev.get("trial") not in trained_trials
                epochs["untrained_in_a_row"] = epochs["untrained_in_a_row"] + 1 if untrained else 0
                if epochs["untrained_in_a_row"] >= UNTRAINED_IN_A_ROW and not epochs["closed"]:
                    close()
                    exhausted.append(
                        f"{UNTRAINED_IN_A_ROW} trials in a row trained nothing (over budget, "
                        f"copies, or failed before their first epoch): the epoch budget "
                        f"({budget}) cannot be spent; stopped (give --n-trials to bound such a run)"
                    )
            log_events.append(ev)
            display.update(ev)

        last_stale_check = time.time()
        # The proxy client calls a trial stale once it has seen its heartbeat unchanged for the
        # grace period, and restarts that watch after a gap of half of it: check more often.
        stale_every = min(30.0, heartbeat_settings()[1] / 4)
        retry = self.study.settings.retry_failed
        try:
            if is_file_storage(self.url):
                # no heartbeats in a file: trials of a run killed whole here are failed and
                # re-queued by proof (runner and worker pids gone), first thing
                self._fail_orphans(ostudy, retry)
            for i in range(n_workers):
                spawn(i)
            with display:
                while procs:
                    # all waiting events first, then always the health checks (a steady stream
                    # of events must not starve them)
                    for ev in read_events(pipes, timeout=0.5):
                        handle(ev)
                    for i, p in list(procs.items()):
                        if p.is_alive():
                            continue
                        p.join()
                        del procs[i]
                        # what it sent before it ended, then its pipe's end (a message cut by
                        # its death ends there too)
                        for ev in read_events(pipes, only=i, to_end=True):
                            handle(ev)
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
                        else:
                            self._fail_orphans(ostudy, retry)
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
        # events the last workers sent just before exiting (all have ended: every pipe ends)
        for ev in read_events(pipes, to_end=True):
            handle(ev)
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
        summary.epochs, summary.epoch_budget = epochs["trained"], budget
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
    def _repair(what: str, repair: Callable[[], list[int]], done: str | None = None) -> list[int]:
        """One storage repair (failing or re-queueing trials): its error is a warning, never the
        end of the run (the next tick tries again); ``done`` logs the trial numbers it touched."""
        try:
            numbers = repair()
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run
            log.warning("%s failed: %s", what, _first_line(e))
            return []
        if numbers and done:
            log.warning(done, numbers)
        return numbers

    def _fail_dead(self, ostudy: optuna.Study, dead: dict[str, str], retry: int) -> list[int]:
        """Fail the RUNNING trials of this run's dead workers (by owner), and re-queue them."""
        return self._repair(
            "failing a dead worker's trials", lambda: fail_trials_of(ostudy, set(dead), dead, retry)
        )

    def _fail_orphans(self, ostudy: optuna.Study, retry: int) -> None:
        self._repair(
            "checking for trials of killed runs",
            lambda: fail_orphans_here(ostudy, retry),
            "failed trials %s of a run killed on this machine and re-queued their params",
        )

    def _fail_abandoned(self, ostudy: optuna.Study, retry: int) -> None:
        self._repair(
            "checking for abandoned trials",
            lambda: fail_abandoned(ostudy, retry),
            "failed trials %s: claimed by workers that died, owned by nobody",
        )
        self._repair(
            "checking for owed retries",
            lambda: requeue_owed(ostudy, retry),
            "re-queued trials %s, failed by a process that died before it could",
        )

    @staticmethod
    def _fail_stale(ostudy: optuna.Study) -> None:
        try:
            optuna.storages.fail_stale_trials(ostudy)
        except Exception as e:  # noqa: BLE001 - housekeeping must not end the run
            log.warning("checking for stale trials failed: %s", _first_line(e))

    def _summary(self, ostudy, n_before, seconds, deaths, interrupted, events) -> RunSummary:
        trials = ostudy.get_trials(deepcopy=False)
        states = dict(Counter(t.state.name for t in trials))
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
            best_source=trial_source(best) if best else None,
            seconds=seconds,
            worker_deaths=deaths,
            interrupted=interrupted,
            events=events,
            pareto=self.study.multi_objective,
        )
