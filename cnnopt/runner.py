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
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from cnnopt.errors import StorageError, TrialFailed
from cnnopt.storage import get_storage, is_file_storage, mask_url, resolve_url
from cnnopt.study import Study

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


# -- devices -------------------------------------------------------------------------------------


def plan_devices(spec: str, n_workers: int) -> list[str]:
    """One device per worker. ``cuda`` spreads workers over all GPUs, most free memory first;
    ``cuda:0,1`` over the listed ones; several workers may share a GPU."""
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return ["cpu"] * n_workers
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrialFailed(f"--device {spec}: CUDA is not available on this machine")
        if spec == "cuda":
            ids = list(range(torch.cuda.device_count()))
            ids.sort(key=lambda i: -torch.cuda.mem_get_info(i)[0])
        else:
            ids = [int(i) for i in spec.split(":", 1)[1].split(",")]
        return [f"cuda:{ids[i % len(ids)]}" for i in range(n_workers)]
    raise TrialFailed(f"--device {spec!r}: expected auto, cpu, cuda or cuda:0,1")


def threads_per_worker(devices: list[str]) -> int:
    """CPU workers split the cores between them (N workers x all cores would oversubscribe)."""
    cpu_workers = sum(1 for d in devices if d == "cpu")
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return max(1, cores // max(cpu_workers, 1)) if cpu_workers else 1


# -- study creation and repair -------------------------------------------------------------------


def open_study(study: Study, url: str, create: bool = True) -> optuna.Study:
    storage = get_storage(url, retry_failed=study.settings.retry_failed)
    try:
        if create:
            ostudy = optuna.create_study(
                storage=storage,
                study_name=study.name,
                direction=study.settings.direction,
                sampler=study.make_sampler(),
                pruner=study.make_pruner(),
                load_if_exists=True,
            )
        else:
            ostudy = optuna.load_study(study_name=study.name, storage=storage)
    except (StorageError, TrialFailed):
        raise
    except Exception as e:  # noqa: BLE001
        raise StorageError(f"{mask_url(url)}: {type(e).__name__}: {mask_url(str(e))}") from None
    if create:
        ostudy.set_user_attr("study_file", study.describe())
        ostudy.set_user_attr("metric", study.settings.metric)
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
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(ostudy, storage.get_trial(trial_id))


def fail_trials_of(ostudy: optuna.Study, worker: str, reason: str, max_retry: int) -> list[int]:
    failed = []
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker:
            fail_trial(ostudy, t._trial_id, reason, max_retry)
            failed.append(t.number)
    return failed


# -- the worker process --------------------------------------------------------------------------


def _claim(tickets, target: int) -> bool:
    with tickets.get_lock():
        if tickets.value >= target:
            return False
        tickets.value += 1
        return True


def _release(tickets) -> None:
    with tickets.get_lock():
        tickets.value -= 1


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
) -> None:
    # Ctrl-C reaches the whole process group; the runner decides, and tells us through `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import torch

    from cnnopt.objective import Objective, worker_tag
    from cnnopt.train import Interrupted

    torch.set_num_threads(spec.threads)
    study = Study.load(study_path, overrides)
    storage = get_storage(url, retry_failed=study.settings.retry_failed)
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

    def on_trial_end(_study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        events.put(
            {
                "event": "end",
                "worker": spec.index,
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "reason": t.user_attrs.get("fail_reason"),
            }
        )

    objective = Objective(study, spec.device, should_stop=stop.is_set, emit=emit)
    events.put({"event": "ready", "worker": spec.index, "pid": os.getpid(), "tag": worker_tag()})
    while (
        not stop.is_set()
        and (deadline is None or time.time() < deadline)
        and _claim(tickets, target)
    ):
        current.clear()
        try:
            ostudy.optimize(
                objective,
                n_trials=1,
                catch=(TrialFailed,),
                callbacks=[on_trial_end],
                gc_after_trial=False,
            )
        except Interrupted:
            # Optuna has marked the trial FAIL; give its params back to the queue and the ticket
            # back to the budget, so re-running the same command resumes exactly here.
            _release(tickets)
            if "trial" in current:
                t = ostudy.trials[current["trial"]]
                ostudy.enqueue_trial(t.params, skip_if_exists=False)
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
    events.put({"event": "exit", "worker": spec.index})


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
        ostudy = open_study(self.study, self.url)
        n_new = self.opt.n_trials if self.opt.n_trials is not None else self.study.settings.n_trials
        n_before = len(ostudy.get_trials(deepcopy=False))
        timeout = self.opt.timeout if self.opt.timeout is not None else self.study.settings.timeout
        deadline = t0 + timeout if timeout else None
        n_workers = max(1, min(self.opt.workers, n_new)) if n_new else 0
        devices = plan_devices(self.opt.device, n_workers)
        threads = threads_per_worker(devices)

        ctx = mp.get_context("spawn")  # fork after torch/CUDA init is unsafe
        stop = ctx.Event()
        tickets = ctx.Value("i", 0)
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
        last_stale_check = time.time()
        try:
            for i in range(n_workers):
                spawn(i)
            with display:
                while procs:
                    try:
                        ev = events.get(timeout=0.5)
                        if ev["event"] == "ready":
                            tags[ev["worker"]] = ev["tag"]
                        log_events.append(ev)
                        display.update(ev)
                        continue
                    except queue_mod.Empty:
                        pass
                    for i, p in list(procs.items()):
                        if p.is_alive():
                            continue
                        p.join()
                        del procs[i]
                        if p.exitcode != 0:
                            deaths += 1
                            tag = tags.get(i, f"{os.uname().nodename}:{p.pid}")
                            reason = f"worker {i} (pid {p.pid}) died with exit code {p.exitcode}"
                            failed = fail_trials_of(
                                ostudy, tag, reason, self.study.settings.retry_failed
                            )
                            for _ in failed:
                                _release(tickets)
                            display.update(
                                {"event": "death", "worker": i, "reason": reason, "trials": failed}
                            )
                            log.warning(
                                "%s; failed trials %s and re-queued their params", reason, failed
                            )
                            if (
                                not stop.is_set()
                                and tickets.value < n_new
                                and deaths <= 3 * n_workers
                            ):
                                spawn(i)
                    if not is_file_storage(self.url) and time.time() - last_stale_check > 30:
                        optuna.storages.fail_stale_trials(ostudy)
                        last_stale_check = time.time()
        finally:
            stop.set()
            for p in procs.values():
                p.join(timeout=15)
                if p.is_alive():
                    p.terminate()
            for s, h in old.items():
                signal.signal(s, h)
        if not is_file_storage(self.url):
            # the last workers are done: fail whatever went stale, so nothing stays RUNNING
            optuna.storages.fail_stale_trials(ostudy)
        return self._summary(
            ostudy, n_before, time.time() - t0, deaths, interrupted["flag"], log_events
        )

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
            new_trials=len(trials) - n_before,
            states=states,
            best_value=best.value if best else None,
            best_params=best.params if best else None,
            best_number=best.number if best else None,
            seconds=seconds,
            worker_deaths=deaths,
            interrupted=interrupted,
            events=events,
        )
