"""`cnnopt status`: what a study's storage says right now, read-only.

Also the helpers every inspecting command shares: open an *existing* study (never create an empty
journal by looking at it) and list the studies of a storage.

Worker liveness:
- RDB storages: Optuna's ``trial_heartbeats`` table (through the storage proxy: the trial's
  heartbeat attribute, see storage.RetryingGrpcStorageProxy); a RUNNING trial's worker is alive
  while its last heartbeat is younger than the storage's grace period.
- journal files (no heartbeats): each RUNNING trial carries the ``worker`` user attribute
  ``host:pid`` (objective.worker_tag); on this host the pid is checked, elsewhere it is unknown.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnopt.errors import StorageError
from cnnopt.recovery import (
    owner_of,
    owner_space,
    pid_alive,
    process_space,
    raw_trials,
    worker_alive_here,
)
from cnnopt.storage import (
    GRACE_PERIOD,
    STORAGE_DIR,
    get_storage,
    is_file_storage,
    mask_url,
    resolve_url,
)
from cnnopt.study import trial_source

# -- opening -------------------------------------------------------------------------------------


def _check_file(url: str) -> None:
    if is_file_storage(url):
        path = Path(url.removeprefix("journal://"))
        if not path.is_file():
            raise StorageError(
                f"no study storage at {path} (pass --storage, or run the study first)"
            )


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An existing storage, without heartbeat threads or retry callbacks (we only read)."""
    _check_file(url)
    return get_storage(url, heartbeat=False)


def load_study(study_name: str, storage: str | None = None) -> tuple[optuna.Study, str]:
    """The stored study ``study_name`` (default storage: storage/<name>.journal) and its URL."""
    url = resolve_url(storage, study_name)
    st = open_storage(url)
    try:
        return optuna.load_study(study_name=study_name, storage=st), url
    except KeyError:
        names = optuna.get_all_study_names(st)
        known = f"; it holds {', '.join(names)}" if names else "; it holds no study"
        raise StorageError(f"no study {study_name!r} in {mask_url(url)}{known}") from None


def journal_files(folder: Path = STORAGE_DIR) -> list[Path]:
    return sorted(folder.glob("*.journal")) if folder.is_dir() else []


def list_studies(url: str) -> list[dict[str, Any]]:
    """Name, direction, trial count and best value of every study in one storage."""
    st = open_storage(url)
    out = []
    for s in optuna.get_all_study_summaries(st, include_best_trial=True):
        best = s.best_trial.value if s.best_trial is not None and len(s.directions) == 1 else None
        out.append(
            {
                "storage": mask_url(url),
                "study": s.study_name,
                "direction": ",".join(d.name.lower() for d in s.directions),
                "trials": s.n_trials,
                "best": best if len(s.directions) == 1 else None,
                "started": s.datetime_start.isoformat(timespec="seconds")
                if s.datetime_start
                else None,
            }
        )
    return out


# -- status of one study -------------------------------------------------------------------------


@dataclass
class WorkerStatus:
    worker: str  # host:pid
    trials: list[int]  # its RUNNING trial numbers
    alive: bool | None  # None: cannot tell from here
    how: str  # why we think so


@dataclass
class StudyStatus:
    study: str
    storage: str  # masked
    direction: str
    metric: str
    states: dict[str, int]
    n_trials: int
    best_number: int | None = None
    best_value: float | None = None
    best_source: str | None = None  # found by the search, or written down (study.trial_source)
    best_params: dict[str, Any] = field(default_factory=dict)
    trials_per_hour: float | None = None
    pruned_fraction: float | None = None
    median_trial_seconds: float | None = None
    workers: list[WorkerStatus] = field(default_factory=list)
    # trial number -> the trial whose result it copied (deduplicate = True: trained no epoch)
    duplicates: dict[int, int] = field(default_factory=dict)
    started: str | None = None  # the first trial's start, ISO 8601 to the second
    # proposals over the study's budget (max_params, max_flops, max_latency_ms): never trained
    over_budget: int = 0
    proposals: int = 0  # finished trials, the over-budget ones included
    # a Pareto study: its objectives, and the front (see pareto_rows)
    objectives: list[str] = field(default_factory=list)
    front: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rdb_heartbeat_ages(storage: Any, trial_ids: list[int]) -> dict[int, float]:
    """Seconds since each RUNNING trial's last heartbeat (RDB storages only)."""
    if not trial_ids or not hasattr(storage, "scoped_session"):
        return {}
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session) as session:
        now = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(models.TrialHeartbeatModel)
            .filter(models.TrialHeartbeatModel.trial_id.in_(trial_ids))
            .all()
        )
        now = now.replace(tzinfo=None)
        return {r.trial_id: (now - r.heartbeat.replace(tzinfo=None)).total_seconds() for r in rows}


def worker_status(ostudy: optuna.Study, url: str) -> list[WorkerStatus]:
    # one read: the RUNNING trials with their owners (the storages get_storage opens), or as
    # any storage gives them (no owners: a foreign storage object)
    raw = raw_trials(ostudy)
    running = raw or ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    by_worker: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in running:
        by_worker.setdefault(str(t.user_attrs.get("worker", "?")), []).append(t)
    ages: dict[int, float] = {}
    grace = GRACE_PERIOD
    if not is_file_storage(url):
        storage = ostudy._storage
        inner = getattr(storage, "_backend", storage)  # _CachedStorage wraps the RDBStorage
        grace = getattr(inner, "grace_period", None) or grace
        try:
            if hasattr(inner, "heartbeat_ages"):  # the storage proxy: a trial attribute
                ages = inner.heartbeat_ages(running)
            else:
                ages = _rdb_heartbeat_ages(inner, [t._trial_id for t in running])
        except Exception:  # noqa: BLE001 - liveness is best effort; the table may be absent
            ages = {}
    here = socket.gethostname()
    # the owner cnnopt wrote on each trial says which machine and pid namespace its pid lives in
    space = process_space()
    owners = {t.number: owner_of(t) for t in raw}
    out = []
    for worker, trials in sorted(by_worker.items()):
        numbers = [t.number for t in trials]
        beat = [ages[t._trial_id] for t in trials if t._trial_id in ages]
        host, _, pid = worker.rpartition(":")
        mine = [owners[n] for n in numbers if owners.get(n)]
        spaces = {owner_space(o) for o in mine}
        if beat:
            age = min(beat)
            alive, how = age <= grace, f"heartbeat {age:.0f}s ago (grace {grace}s)"
        elif space and space in spaces:  # this machine, this pid namespace: the pid tells
            alive = any(worker_alive_here(o, space) for o in mine)
            how = f"pid {pid} {'running' if alive else 'gone'} on this host"
        elif host == here and pid.isdigit() and spaces <= {None}:  # owners without a space
            alive = pid_alive(int(pid))
            how = f"pid {pid} {'running' if alive else 'gone'} on this host"
        elif worker == "?":
            alive, how = None, "trial has no worker attribute"
        elif not is_file_storage(url):
            alive, how = None, "no heartbeat recorded"
        else:
            alive, how = None, f"on host {host}: cannot check from {here}"
        out.append(WorkerStatus(worker, numbers, alive, how))
    return out


def study_status(ostudy: optuna.Study, url: str) -> StudyStatus:
    trials = ostudy.get_trials(deepcopy=False)
    states = dict(Counter(t.state.name for t in trials))
    multi = len(ostudy.directions) > 1
    st = StudyStatus(
        study=ostudy.study_name,
        storage=mask_url(url),
        direction=",".join(d.name.lower() for d in ostudy.directions),
        metric=str(ostudy.user_attrs.get("metric", "value")),
        states=states,
        n_trials=len(trials),
    )
    if not multi:
        try:
            best = ostudy.best_trial
            st.best_number, st.best_value, st.best_params = best.number, best.value, best.params
            st.best_source = trial_source(best)
        except ValueError:
            pass
    finished = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete
    ]
    st.duplicates = {
        t.number: int(t.user_attrs["duplicate_of"])
        for t in finished
        if t.user_attrs.get("duplicate_of") is not None
    }
    starts = [t.datetime_start for t in trials if t.datetime_start]
    if starts:
        st.started = min(starts).isoformat(timespec="seconds")
    if finished:
        end = max(t.datetime_complete for t in finished)
        hours = (end - min(starts)).total_seconds() / 3600 if starts else 0
        if any(t.state == TrialState.RUNNING for t in trials):
            now = dt.datetime.now()
            hours = max(hours, (now - min(starts)).total_seconds() / 3600)
        st.trials_per_hour = len(finished) / hours if hours > 0 else None
        st.pruned_fraction = states.get("PRUNED", 0) / len(finished)
        durations = [  # of trials that trained: a copied duplicate takes no time
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in finished
            if t.datetime_start and t.number not in st.duplicates
        ]
        st.median_trial_seconds = statistics.median(durations) if durations else None
    st.workers = worker_status(ostudy, url)
    st.proposals = len(finished)
    st.over_budget = sum(1 for t in finished if t.user_attrs.get("over_budget"))
    if multi:
        st.objectives = objective_names(ostudy)
        st.front = pareto_rows(ostudy)
    return st


def objective_names(ostudy: optuna.Study) -> list[str]:
    """A Pareto study's objectives as its study file names them (the metric, then costs)."""
    settings = (ostudy.user_attrs.get("study_file") or {}).get("settings") or {}
    names = list(settings.get("objectives") or [])
    if len(names) == len(ostudy.directions):
        return names
    return [f"value {i}" for i in range(len(ostudy.directions))]


def pareto_rows(ostudy: optuna.Study) -> list[dict[str, Any]]:
    """The front of a Pareto study, best metric first: its complete trials that no other
    complete trial dominates, and (marked ``pruned``) the pruned trials whose last accuracy and
    cost no complete front point dominates: configurations that a full training might add to
    the front, for a user who wants to retrain one (``cnnopt export --trial N``)."""
    from cnnopt.pareto import front_mask

    names = objective_names(ostudy)
    maximize = ostudy.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    cost_attrs = [_cost_attr(n) for n in names[1:]]
    complete = list(ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    points = [(t.values[0], tuple(t.values[1:])) for t in complete]
    rows = [
        _front_row(t, names, "complete", t.values[0], t.values[1:], None)
        for t, on in zip(complete, front_mask(points, maximize), strict=True)
        if on
    ]
    front_points = [(r["values"][0], tuple(r["values"][1:])) for r in rows]
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        curve = t.user_attrs.get("intermediate") or {}
        costs = [t.user_attrs.get(a) for a in cost_attrs]
        if not curve or None in costs or t.user_attrs.get("over_budget"):
            continue
        epoch = max(curve, key=int)
        point = (float(curve[epoch]), tuple(float(c) for c in costs))
        if front_mask([point, *front_points], maximize)[0]:
            rows.append(_front_row(t, names, "pruned", point[0], point[1], int(epoch)))
    rows.sort(key=lambda r: (-r["values"][0] if maximize else r["values"][0], r["number"]))
    return rows


def _cost_attr(name: str) -> str:
    from cnnopt.cost import COST_ATTR

    return COST_ATTR.get(name, name)


def _front_row(t, names, state, metric, costs, epoch) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": state,
        "epoch": epoch,  # pruned: the epoch its metric is from; complete: None (the last)
        "values": [float(metric), *(float(c) for c in costs)],
        "objectives": names,
        "params": dict(t.params),
    }


# -- printing ------------------------------------------------------------------------------------
# One "label  value" line per fact, never a table cell: a table on an 80-column terminal, or in a
# log (rich assumes 80 columns there), cuts a study name or a storage URL to "fashion_cnn_…", and
# those are what a reader copies into the next command. Lines are soft-wrapped (the terminal
# wraps them, rich inserts no line break), so every name stays whole and in one piece.

LABEL = 16  # width of the label column


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _console(console: Any) -> Any:
    from rich.console import Console

    return console or Console()


def _line(console: Any, label: str, value: str, style: str = "bold") -> None:
    from rich.text import Text

    text = Text(f"{label:<{LABEL}}", style=style)
    text.append(" " + value)
    console.print(text, soft_wrap=True)


def print_status(st: StudyStatus, console: Any = None) -> None:
    from rich.text import Text

    console = _console(console)
    console.print(Text(f"study {st.study}", style="bold underline"), soft_wrap=True)
    _line(console, "storage", st.storage)
    if st.started:
        _line(console, "started", st.started)
    if st.objectives:  # a Pareto study: each objective with its direction
        dirs = st.direction.split(",")
        _line(console, "objectives", ", ".join(f"{d} {n}" for d, n in zip(dirs, st.objectives)))
    else:
        _line(console, "direction", f"{st.direction} {st.metric}")
    _line(
        console,
        "trials",
        f"{st.n_trials}: " + ", ".join(f"{n} {k.lower()}" for k, n in sorted(st.states.items()))
        if st.n_trials
        else "none",
    )
    if st.best_value is not None:
        source = f" ({st.best_source})" if st.best_source else ""
        _line(console, "best", f"#{st.best_number}: {st.best_value:.4f}{source}")
        for k, v in st.best_params.items():
            _line(console, f"  {k}", _fmt(v), style="")
    if st.trials_per_hour is not None:
        _line(console, "trials per hour", f"{st.trials_per_hour:.1f}")
    if st.median_trial_seconds is not None:
        _line(console, "median trial", f"{st.median_trial_seconds:.1f}s")
    if st.pruned_fraction is not None:
        _line(console, "pruned", f"{100 * st.pruned_fraction:.0f}% of finished trials")
    if st.duplicates:
        pairs = [f"#{n} = #{o}" for n, o in sorted(st.duplicates.items())]
        more = f", ... ({len(pairs) - 12} more)" if len(pairs) > 12 else ""
        _line(
            console,
            "duplicates",
            f"{len(pairs)} copied an earlier trial's result without training: "
            + ", ".join(pairs[:12])
            + more,
        )
    if st.over_budget:
        _line(
            console,
            "over budget",
            f"{st.over_budget} of {st.proposals} proposals, recorded before their first epoch "
            "(never trained)",
        )
    if st.objectives:
        print_front(st, console)
    console.print()
    if not st.workers:
        console.print("no running trials (no worker is busy)")
        return
    console.print(Text("workers with running trials", style="bold"))
    for w in st.workers:
        alive = {True: ("alive", "green"), False: ("dead", "red"), None: ("unknown", "")}[w.alive]
        trials = ", ".join(f"#{n}" for n in w.trials)
        line = Text.assemble(f"  {w.worker}  ", alive, f"  trials {trials}  ({w.how})")
        console.print(line, soft_wrap=True)


def _fmt_objective(name: str, v: float) -> str:
    if name in ("params", "flops"):
        return f"{v / 1e6:.3g}M" if v >= 1e6 else f"{v:,.0f}"
    if name == "latency_ms":
        return f"{v:.3g} ms"
    return f"{v:.4f}"


def print_front(st: StudyStatus, console: Any) -> None:
    """The Pareto front, best metric first, one trial per line; pruned trials marked with the
    epoch their metric is from."""
    from rich.text import Text

    console.print()
    if not st.front:
        console.print(f"Pareto front ({' vs '.join(st.objectives)}): no complete trial yet")
        return
    n_complete = sum(r["state"] == "complete" for r in st.front)
    console.print(
        Text(f"Pareto front ({' vs '.join(st.objectives)})", style="bold"), soft_wrap=True
    )
    for r in st.front:
        cells = "  ".join(
            f"{n} {_fmt_objective(n, v)}" for n, v in zip(st.objectives, r["values"], strict=True)
        )
        if r["state"] == "complete":
            line = Text(f"  #{r['number']:<5} {cells}  complete")
        else:
            line = Text.assemble(
                f"  #{r['number']:<5} {cells}  ", (f"pruned at epoch {r['epoch']}", "yellow")
            )
        console.print(line, soft_wrap=True)
    console.print(
        f"{n_complete} complete trials on the front; a pruned one is listed when none of them "
        "dominates it at the epoch it stopped. Export one: cnnopt export STUDY --trial N; "
        "the list: --pareto",
        soft_wrap=True,
    )


def print_study_list(rows: list[dict[str, Any]], console: Any = None) -> None:
    """One block per study: its name, then its storage, direction, trials, best and start."""
    from rich.text import Text

    console = _console(console)
    if not rows:
        console.print("no studies found")
        return
    for i, r in enumerate(rows):
        if i:
            console.print()
        console.print(Text(r["study"], style="bold"), soft_wrap=True)
        _line(console, "  storage", r["storage"], style="")
        best = "" if r["best"] is None else f", best {r['best']:.4f}"
        _line(console, "  trials", f"{r['trials']} ({r['direction']}{best})", style="")
        if r["started"]:
            _line(console, "  started", r["started"], style="")


def status(study_name: str | None, storage: str | None) -> StudyStatus | list[dict[str, Any]]:
    """One study's status, or (no name) the list of studies of the storage / storage/*.journal."""
    if study_name:
        ostudy, url = load_study(study_name, storage)
        return study_status(ostudy, url)
    url = storage or os.environ.get("CNNOPT_STORAGE")
    if url:
        return list_studies(url)
    files = journal_files()
    if not files:
        raise StorageError(f"no *.journal files under {STORAGE_DIR}/; pass --storage")
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(list_studies(str(f)))
    return rows
