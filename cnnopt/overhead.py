"""Storage overhead per trial: time spent in storage calls vs training, for several storages
side by side in one run (``cnnopt storage overhead STUDY_FILE --storage A --storage B``).

Each storage gets a fresh study (a unique name) and the same trials of the study file, run in this
process with the real Objective, one after the other. Every storage method call is timed at the
backend (RDBStorage / JournalStorage), outermost call only; calls from the main thread are on the
trial's critical path, the heartbeat thread's run beside training and are reported apart.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna

from cnnopt.storage import get_storage, is_file_storage, mask_url


@dataclass
class Timings:
    calls: int = 0
    seconds: float = 0.0
    heartbeat_calls: int = 0
    heartbeat_seconds: float = 0.0
    by_method: dict[str, float] = field(default_factory=dict)


def instrument(storage: Any, timings: Timings) -> None:
    """Wrap every storage method of ``storage`` (as returned by get_storage)."""
    backend = storage  # get_storage gives the RDBStorage itself (Optuna caches it later)
    local = threading.local()
    names = {
        n
        for cls in type(backend).__mro__
        for n, v in vars(cls).items()
        if callable(v) and not n.startswith("__") and n not in ("remove_session",)
    }
    for name in names:
        fn = getattr(backend, name, None)
        if not callable(fn) or isinstance(fn, type):
            continue

        def timed(*args, __fn=fn, __name=name, **kwargs):
            if getattr(local, "depth", 0):
                return __fn(*args, **kwargs)
            local.depth = 1
            t0 = time.perf_counter()
            try:
                return __fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                local.depth = 0
                if threading.current_thread() is threading.main_thread():
                    timings.calls += 1
                    timings.seconds += dt
                    timings.by_method[__name] = timings.by_method.get(__name, 0.0) + dt
                else:
                    timings.heartbeat_calls += 1
                    timings.heartbeat_seconds += dt

        setattr(backend, name, timed)


@dataclass
class OverheadRow:
    storage: str
    trials: int
    trial_seconds: float  # mean wall time of a trial
    storage_seconds: float  # mean time in storage calls per trial (main thread)
    storage_calls: float  # mean calls per trial
    heartbeat_seconds: float  # mean per trial, in the heartbeat thread (beside training)
    top: list[tuple[str, float]]

    @property
    def share(self) -> float:
        return self.storage_seconds / self.trial_seconds if self.trial_seconds else 0.0


def measure(study_path: str, urls: list[str], n_trials: int, overrides: dict) -> list[OverheadRow]:
    from cnnopt.objective import Objective
    from cnnopt.study import Study

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = Study.load(study_path, overrides)
    objective = Objective(study, "cpu")
    rows = []
    # one untimed trial first: data loading and first-call warm-up are not storage costs
    optuna.create_study(direction=study.settings.direction).optimize(objective, n_trials=1)
    for url in urls:
        storage = get_storage(url)
        timings = Timings()
        instrument(storage, timings)
        name = f"overhead-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        ostudy = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=study.settings.direction,
            sampler=study.make_sampler(),
            pruner=study.make_pruner(),
        )
        ostudy.optimize(objective, n_trials=n_trials)
        wall = time.perf_counter() - t0
        top = sorted(timings.by_method.items(), key=lambda kv: -kv[1])[:4]
        rows.append(
            OverheadRow(
                storage=f"file {url}" if is_file_storage(url) else mask_url(url),
                trials=n_trials,
                trial_seconds=wall / n_trials,
                storage_seconds=timings.seconds / n_trials,
                storage_calls=timings.calls / n_trials,
                heartbeat_seconds=timings.heartbeat_seconds / n_trials,
                top=[(k, v / n_trials) for k, v in top],
            )
        )
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except Exception:  # noqa: BLE001 - journal storages keep their history
            pass
    return rows


def format_rows(rows: list[OverheadRow]) -> str:
    lines = [
        f"{'storage':<60} {'trial s':>8} {'storage s':>9} {'share':>6} {'calls':>6} {'hb s':>6}"
    ]
    for r in rows:
        lines.append(
            f"{r.storage[:60]:<60} {r.trial_seconds:8.3f} {r.storage_seconds:9.4f} "
            f"{100 * r.share:5.1f}% {r.storage_calls:6.0f} {r.heartbeat_seconds:6.3f}"
        )
        lines.append("    " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in r.top))
    return "\n".join(lines)
