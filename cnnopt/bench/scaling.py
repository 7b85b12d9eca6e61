"""Bench section ``scaling``: trials/hour with 1, 2 (and 4) workers, and per-trial overhead.

Through the Runner on the journal file storage; per-trial overhead (worker start, dataset load,
storage calls) as a share of trial time, on the file storage and on PostgreSQL when a URL is given.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cnnopt.bench.common import BENCH_STUDY, FIXED_PARAMS, BenchOptions, Context, Row, n_cores


def _scaling_overrides(opts: BenchOptions, name: str) -> dict[str, Any]:
    plan = opts.plan
    return {
        "name": name,
        "dataset": opts.dataset,
        "data_dir": str(Path(opts.data_dir).resolve()) if opts.data_dir else None,
        "train_subset": plan.scaling_subset,
        "epochs": plan.scaling_epochs,
        "sampler": "random",
        "pruner": "none",
        # the section times identical trials: with deduplication every repeat would copy the first
        # trial's result in milliseconds instead of training (repeats train with a new seed each)
        "deduplicate": False,
    }


def _probe_worker_start(study_path: str, overrides: dict, device: str, queue) -> None:
    """What a worker does before its first trial: import, load the study file, load the data."""
    t0 = time.perf_counter()
    import optuna  # noqa: F401

    from cnnopt.data import load_split
    from cnnopt.objective import Objective  # noqa: F401
    from cnnopt.study import Study

    study = Study.load(study_path, overrides)
    t1 = time.perf_counter()
    load_split(study.base_config().data, device)
    queue.put({"import_s": t1 - t0, "data_s": time.perf_counter() - t1})


def measure_worker_start(opts: BenchOptions, device: str) -> dict[str, float]:
    ctx = mp.get_context("spawn")  # as the runner starts its workers
    queue = ctx.Queue()
    overrides = _scaling_overrides(opts, "bench_probe")
    t0 = time.perf_counter()
    p = ctx.Process(target=_probe_worker_start, args=(str(BENCH_STUDY), overrides, device, queue))
    p.start()
    out = queue.get(timeout=300)
    total = time.perf_counter() - t0
    p.join()
    out["spawn_s"] = max(total - out["import_s"] - out["data_s"], 0.0)
    out["total_s"] = total
    return out


class StorageTimer:
    """Wraps every public method of a storage object (in place) to time the calls made from the
    main thread; nested calls (a storage method calling another) count once."""

    def __init__(self, storage: Any):
        import threading

        self.storage = storage
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        main = threading.main_thread()
        for name in dir(storage):
            if name.startswith("_"):
                continue
            attr = getattr(storage, name)
            if not callable(attr) or isinstance(attr, type):
                continue
            setattr(storage, name, self._wrap(attr, threading, main))

    def _wrap(self, fn: Callable, threading: Any, main: Any) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not main or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
                self._depth -= 1

        return timed


def measure_storage_share(
    opts: BenchOptions, url: str, label: str, device: torch.device
) -> dict[str, Any]:
    """Run a few identical trials in-process on ``url`` with timed storage calls."""
    import optuna

    from cnnopt.errors import TrialFailed
    from cnnopt.objective import Objective
    from cnnopt.storage import get_storage
    from cnnopt.study import Study

    study = Study.load(BENCH_STUDY, _scaling_overrides(opts, f"bench_overhead_{label}"))
    storage = get_storage(url)
    timer = StorageTimer(storage)
    t0 = time.perf_counter()
    ostudy = optuna.create_study(
        storage=storage, study_name=study.name, direction="maximize",
        sampler=study.make_sampler(), pruner=study.make_pruner(), load_if_exists=True,
    )  # fmt: skip
    setup_s, setup_calls = timer.seconds, timer.calls
    timer.seconds, timer.calls = 0.0, 0
    for _ in range(opts.plan.overhead_trials + 1):
        ostudy.enqueue_trial(FIXED_PARAMS)
    objective = Objective(study, device)
    # One untimed trial first: data loading is measured separately, and the first trial of a
    # process also pays one-off warm-up (oneDNN primitives, allocator) that is not a storage cost.
    ostudy.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
    timer.seconds, timer.calls = 0.0, 0
    t1 = time.perf_counter()
    ostudy.optimize(
        objective, n_trials=opts.plan.overhead_trials, catch=(TrialFailed,), gc_after_trial=False
    )
    trial_s = (time.perf_counter() - t1) / opts.plan.overhead_trials
    out = {
        "storage": label,
        "trial_s": trial_s,
        "storage_s_per_trial": timer.seconds / opts.plan.overhead_trials,
        "storage_calls_per_trial": timer.calls / opts.plan.overhead_trials,
        "create_study_s": setup_s,
        "create_study_calls": setup_calls,
        "first_call_s": t1 - t0,
    }
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()
    return out


@contextlib.contextmanager
def scratch_postgres(url: str) -> Iterator[str]:
    """A throw-away database on the server of ``url`` (dropped afterwards)."""
    import sqlalchemy

    base = sqlalchemy.engine.make_url(url)
    name = f"cnnopt_bench_{os.getpid()}_{int(time.time())}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(opts: BenchOptions, ctx: Context) -> list[Row]:
    return bench_scaling(opts, ctx.workdir, ctx.device)


def bench_scaling(opts: BenchOptions, workdir: Path, device: torch.device) -> list[Row]:
    from cnnopt.runner import Runner, RunOptions, open_study
    from cnnopt.study import Study

    plan = opts.plan
    cores = n_cores()
    device_spec = "cpu" if device.type == "cpu" else opts.device
    counts = [1, 2] + ([4] if cores >= 4 or device.type == "cuda" else [])
    rows: list[Row] = []
    tph: dict[int, float] = {}
    steady: dict[int, float] = {}
    for w in counts:
        name = f"bench_scaling_w{w}"
        overrides = _scaling_overrides(opts, name)
        study = Study.load(BENCH_STUDY, overrides)
        url = str(workdir / f"{name}.journal")
        ostudy = open_study(study, url)
        for _ in range(plan.scaling_trials):
            ostudy.enqueue_trial(FIXED_PARAMS)
        options = RunOptions(
            workers=w, n_trials=plan.scaling_trials, storage=url, device=device_spec,
            progress=False,
        )  # fmt: skip
        summary = Runner(study, overrides, options).run()
        done = summary.states.get("COMPLETE", 0)
        tph[w] = done / summary.seconds * 3600
        # Steady state: from the first trial's start to the last trial's end (no worker start).
        trials = [t for t in open_study(study, url, create=False).get_trials(deepcopy=False)
                  if t.datetime_start and t.datetime_complete]  # fmt: skip
        span = (
            max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        ).total_seconds()
        steady[w] = len(trials) / span * 3600 if span > 0 else float("nan")
        opts.log(f"scaling: {w} worker(s): {done} trials in {summary.seconds:.1f} s")
        threads = max(1, cores // w) if device.type == "cpu" else None
        rows.append(
            Row(
                "scaling", f"trials/hour, {w} worker(s)", tph[w], "trials/h",
                "trials/hour, 1 worker" if w > 1 else "itself (baseline)", tph.get(1),
                note=f"{done} identical trials x {plan.scaling_epochs} epochs on "
                f"{plan.scaling_subset} images, journal file, wall time incl. worker start"
                + (f"; {threads} thread(s) per worker on {cores} cores" if threads else ""),
                extra={"seconds": summary.seconds, "states": summary.states},
            )
        )  # fmt: skip
        rows.append(
            Row(
                "scaling", f"trials/hour steady state, {w} worker(s)", steady[w], "trials/h",
                "steady state, 1 worker" if w > 1 else "itself (baseline)", steady.get(1),
                note="first trial start to last trial end: worker start and data load excluded",
            )
        )  # fmt: skip
    if cores < 4 and device.type == "cpu":
        rows.append(
            Row("scaling", "trials/hour, 4 workers", None, "trials/h", "trials/hour, 1 worker",
                tph.get(1), note=f"skipped: {cores} cores")
        )  # fmt: skip

    # Per-trial overhead: what a worker pays once (start, data) and per trial (storage calls).
    start = measure_worker_start(opts, str(device))
    shares = [measure_storage_share(opts, str(workdir / "overhead.journal"), "journal", device)]
    pg_note = None
    if opts.postgres:
        try:
            with scratch_postgres(opts.postgres) as pg_url:
                shares.append(measure_storage_share(opts, pg_url, "postgresql", device))
        except Exception as e:  # noqa: BLE001 - an unreachable server skips the row, with why
            pg_note = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    trial_s = shares[0]["trial_s"]
    once = [
        ("worker start (spawn + imports + study file)", start["spawn_s"] + start["import_s"]),
        ("dataset load + split (once per worker)", start["data_s"]),
    ]
    for label, secs in once:
        rows.append(
            Row("scaling", label, secs, "s", "one trial", trial_s, better="lower",
                note=f"{secs / trial_s:.1%} of one trial; paid once per worker, shared by all "
                "its trials", extra=start)
        )  # fmt: skip
    for s in shares:
        rows.append(
            Row(
                "scaling", f"storage calls per trial, {s['storage']}", s["storage_s_per_trial"],
                "s", "one trial", s["trial_s"], better="lower",
                note=f"{s['storage_s_per_trial'] / s['trial_s']:.2%} of trial time; "
                f"{s['storage_calls_per_trial']:.0f} calls per trial",
                extra=s,
            )
        )  # fmt: skip
    if opts.postgres is None or pg_note:
        rows.append(
            Row("scaling", "storage calls per trial, postgresql", None, "s", "one trial", trial_s,
                better="lower", note=pg_note or "skipped: no --postgres URL given")
        )  # fmt: skip
    return rows
