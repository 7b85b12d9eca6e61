"""What runs inside a worker process of `cnnopt run`: load the study once, then trials.

The runner (``cnnopt.runner``) starts each worker with ``worker_main`` as the target of a
``spawn`` multiprocessing context (fork after torch/CUDA init is unsafe), so this module is what a
fresh interpreter imports by name (it does not import the runner, which imports it). A worker binds its GPU before
torch starts CUDA, takes a ticket of the runner's trial budget before each trial (the slot flags
below tell the runner which ticket a dead worker held), gives a finished trial's memory back,
re-queues a trial interrupted by Ctrl-C, and exits with ``EXIT_CUDA_CONTEXT_LOST`` after a sticky
CUDA error so that the runner starts a fresh process in its place.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from cnnopt.artifacts import TrialArtifacts, png_unavailable, resolve_location
from cnnopt.dedup import SpaceGrid
from cnnopt.devices import bind_worker
from cnnopt.errors import CnnoptError, TrialFailed
from cnnopt.recovery import requeue
from cnnopt.storage import RETRY_SECONDS, RetryStaleTrialCallback, get_storage, mask_url
from cnnopt.study import Study

log = logging.getLogger("cnnopt")


@dataclass
class WorkerSpec:
    index: int
    device: str
    threads: int


class EventPipe:
    """A worker's end of its own event pipe to the runner (progress, trial ends, fatal errors).

    One pipe per worker, not one ``multiprocessing.Queue`` for all: a Queue's writers share one
    lock, held by a writer's feeder thread while it sends, and a worker killed at that moment
    (SIGKILL, the OOM killer) never released it: every other worker blocked on the lock, the
    runner saw no more events, and the run hung with its trials done. A worker's death now ends
    only its own pipe (the runner reads what it sent, then end-of-file). ``put`` sends at once,
    from the calling thread: no feeder thread to lose an event when the process exits."""

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()  # one message at a time on the pipe

    def put(self, event: dict) -> None:
        with self._lock:
            try:
                _die_mid_event_for_tests(self._conn, event)
                self._conn.send(event)
            except OSError:  # the runner is gone (BrokenPipeError): nobody left to tell
                pass


def _die_mid_event_for_tests(conn, event: dict) -> None:
    """Fault-test hook: if the file named by $CNNOPT_TEST_DIE_MID_EVENT exists, the first epoch
    event of the worker that removes it is cut in half on the pipe and the worker SIGKILLs itself,
    as the OOM killer would mid-send: the runner must read up to the cut and go on."""
    path = os.environ.get("CNNOPT_TEST_DIE_MID_EVENT")
    if not (path and event.get("event") == "epoch"):
        return
    try:
        os.unlink(path)  # one worker, once
    except FileNotFoundError:
        return
    import pickle
    import struct

    data = pickle.dumps(event)
    os.write(conn.fileno(), struct.pack("!i", len(data)) + data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)


def owner_name(run_id: str, tag: str) -> str:
    """The owner a worker writes on its trials: its runner's run id and its ``host:pid`` tag."""
    return f"{run_id}/{tag}"


# Each worker slot has an "in flight" flag in a shared array: ASKING when its worker takes a
# ticket, TAGGED once its trial exists (its id in the slot's entry of ``trial_ids``), IDLE when
# that trial has ended (complete, pruned, failed, or interrupted and re-queued). A worker that dies
# with the flag set held a ticket; the runner gives it back (once) unless the trial it held has
# finished (Optuna recorded it before the worker died, just before it reset its flag): that
# ticket bought a trial. A worker that dies ASKING may leave a RUNNING trial it never saw: the
# trial carries the worker as its owner all the same (cnnopt.storage.owners._OwnedTrials).
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
    if not hasattr(events, "put"):  # the runner's pipe (tests may pass any queue)
        events = EventPipe(events)
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
        # seeded per trial (study seed, trial number): workers and runners draw apart
        sampler=study.make_sampler(),
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
