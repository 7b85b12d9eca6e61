"""The chaos run's verdict: from the stored trials, the runners' launches and the injector's
record of kills, what was lost, duplicated or wrongly failed (``analyse``), the one line a script
reads (``final_line``) and every failed check in words (``failures``).

Apart from the harness (``cnnopt.bench.chaos``, which starts runners and injects faults) because
this is what a reader checks to trust the figures: pure functions, a list of trials in and figures
out, tested on hand-made trials (tests/test_chaos.py). The checks themselves are described in the
harness's docstring.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

OWNER_KEY = "cnnopt:owner"  # cnnopt.storage's, where it has one: who runs a trial


@dataclass
class LaunchInfo:
    id: int
    n_trials: int
    pids: list[int]
    killed: bool
    rc: int | None


def _pid_of_tag(tag: Any, host: str) -> int | None:
    h, _, pid = str(tag or "").rpartition(":")
    return int(pid) if h == host and pid.isdigit() else None


def _epochs(t) -> list[int]:
    return [int(h["epoch"]) for h in t.user_attrs.get("history") or [] if "epoch" in h]


def analyse(
    trials: list, launches: list[LaunchInfo], kills: dict[int, float], retry_failed: int, host: str
) -> dict[str, Any]:
    """The figures and the evidence behind each (see the module doc)."""
    from optuna.trial import TrialState

    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [t for t in trials if t.state in finished_states]
    states = dict(Counter(t.state.name for t in trials))

    # what was asked for: each launch's --n-trials, or, for one that was killed (or failed), the
    # trials its workers finished
    owner = {pid: lc.id for lc in launches for pid in lc.pids}
    by_launch: dict[int, int] = {}
    unattributed = 0
    for t in finished:
        lid = owner.get(_pid_of_tag(t.user_attrs.get("worker"), host))
        if lid is None:
            unattributed += 1
        else:
            by_launch[lid] = by_launch.get(lid, 0) + 1
    requested = 0
    launch_mismatch = []
    for lc in launches:
        done = by_launch.get(lc.id, 0)
        if lc.killed or lc.rc != 0:
            requested += done
        else:
            requested += lc.n_trials
            if done != lc.n_trials:
                launch_mismatch.append(f"launch {lc.id}: asked for {lc.n_trials}, finished {done}")

    # no configuration trained twice; no trial (with its retries) finished twice
    extra: set[int] = set()
    by_hash: dict[str, list] = {}
    by_origin: dict[int, list] = {}
    for t in sorted(trials, key=lambda t: t.number):
        by_origin.setdefault(int(t.system_attrs.get("failed_trial", t.number)), []).append(t)
        if t.state in finished_states and "duplicate_of" not in t.user_attrs:
            h = t.user_attrs.get("config_hash")
            if h:
                by_hash.setdefault(h, []).append(t)
    for group in by_hash.values():
        extra.update(t.number for t in group[1:])
    for group in by_origin.values():
        extra.update(t.number for t in [t for t in group if t.state in finished_states][1:])

    # no trial failed while its worker lived
    wrongly_failed = []
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        reason = str(t.user_attrs.get("fail_reason", ""))
        pid = _pid_of_tag(t.user_attrs.get("worker"), host)
        if (
            pid is None
        ):  # the owner written with the trial (RUN_ID/HOST:PID), if the storage has one
            owner = str(t.system_attrs.get(OWNER_KEY) or "")
            pid = _pid_of_tag(owner.rpartition("/")[2], host)
        if pid is None:  # failed before it was tagged: the dead worker its reason names
            m = re.search(r"\(pid (\d+)\)", reason)
            pid = int(m.group(1)) if m else None
        ended = t.datetime_complete.timestamp() if t.datetime_complete else None
        started = t.datetime_start.timestamp() if t.datetime_start else None
        ok = (
            pid in kills
            and (ended is None or ended >= kills[pid] - 1.0)
            # an untagged trial created after the named worker died cannot have been its
            and (
                "worker" in t.user_attrs
                or OWNER_KEY in t.system_attrs
                or started is None
                or started <= kills[pid] + 1.0
            )
        )
        if not ok:
            wrongly_failed.append(
                f"trial {t.number}: worker {t.user_attrs.get('worker', '?')}, "
                f"reason {reason or '(none: failed as stale?)'}"
            )

    # checkpointed retries resume where their predecessor stopped; failed trials are re-queued
    lost_epochs, resumed, lost_requeues = 0, 0, []
    epoch_losses = []
    for origin, group in by_origin.items():
        stored = 0  # the last epoch any earlier attempt of this trial stored
        for prev, cur in zip(group, group[1:], strict=False):
            stored = max(stored, *_epochs(prev), 0)
            # it began training (copying a twin trains nothing): where did it start?
            began = bool(_epochs(cur)) or "params_count" in cur.user_attrs
            if not stored or not began or "duplicate_of" in cur.user_attrs:
                continue
            start = int(cur.user_attrs.get("resumed_from_epoch", 0))
            if start >= stored:
                resumed += 1
            else:
                lost_epochs += stored - start
                epoch_losses.append(
                    f"trial {cur.number} (retry of {origin}) resumed from epoch {start}, "
                    f"an earlier attempt had stored epoch {stored}"
                )
        last = group[-1]
        if last.state == TrialState.FAIL and len(group) <= retry_failed:
            if last.params or last.system_attrs.get("fixed_params"):
                lost_requeues.append(
                    f"trial {last.number} (of {origin}): not re-queued; worker "
                    f"{last.user_attrs.get('worker', '?')}, reason "
                    f"{last.user_attrs.get('fail_reason') or '(none: failed as stale?)'}"
                )

    return {
        "trials": requested,
        "finished": len(finished),
        "running": states.get("RUNNING", 0),
        "waiting": states.get("WAITING", 0),
        "duplicated": len(extra),
        "wrongly_failed": len(wrongly_failed),
        "lost_epochs": lost_epochs,
        "lost_requeues": len(lost_requeues),
        "states": states,
        "stored_trials": len(trials),
        "copies": sum(1 for t in finished if "duplicate_of" in t.user_attrs),
        "retries": sum(1 for t in trials if "failed_trial" in t.system_attrs),
        "resumed": resumed,
        "unattributed_finished": unattributed,
        "launch_mismatch": launch_mismatch,
        "launches": [
            {
                "id": lc.id,
                "n_trials": lc.n_trials,
                "killed": lc.killed,
                "rc": lc.rc,
                "workers_seen": len(lc.pids),
                "finished": by_launch.get(lc.id, 0),
            }
            for lc in launches
        ],  # fmt: skip
        "duplicated_trials": sorted(extra),
        "wrongly_failed_trials": wrongly_failed,
        "epoch_losses": epoch_losses,
        "lost_requeue_trials": lost_requeues,
        # what a leftover looked like: who owned it, whether it ever sent a heartbeat
        "left_unfinished": [
            {
                "number": t.number,
                "state": t.state.name,
                "start": t.datetime_start.isoformat() if t.datetime_start else None,
                "user_attrs": {k: v for k, v in t.user_attrs.items() if k != "history"},
                "epochs": _epochs(t),
                "system_attrs": t.system_attrs,
            }
            for t in trials
            if t.state in (TrialState.RUNNING, TrialState.WAITING)
        ],
    }


LINE_KEYS = (
    "trials", "finished", "running", "waiting", "duplicated", "wrongly_failed", "lost_epochs",
    "crashes", "lost_requeues",
)  # fmt: skip


def final_line(f: dict[str, Any]) -> str:
    kinds = " ".join(f"{k}={v}" for k, v in f["faults_by_kind"].items())
    figures = " ".join(f"{k}={f[k]}" for k in LINE_KEYS)
    return f"chaos: {figures} faults={f['faults']} ({kinds})"


def failures(f: dict[str, Any]) -> list[str]:
    """Every check that failed, one line each (empty: all passed)."""
    out = []
    if f["finished"] != f["trials"]:
        out.append(f"finished {f['finished']} trials, asked for {f['trials']}")
    out += f["launch_mismatch"]
    for key in ("running", "waiting", "duplicated", "wrongly_failed", "lost_epochs", "crashes",
                "lost_requeues"):  # fmt: skip
        if f[key]:
            out.append(f"{key}={f[key]}")
    out += [f"wrongly failed: {x}" for x in f["wrongly_failed_trials"]]
    out += [f"crash: {x}" for x in f["crash_lines"]]
    out += [f"duplicated: trial {n}" for n in f["duplicated_trials"]]
    out += [f"lost epochs: {x}" for x in f["epoch_losses"]]
    out += [f"lost re-queue: {x}" for x in f["lost_requeue_trials"]]
    out += [f"runner error: {x}" for x in f["runner_errors"]]
    if f["timed_out"]:
        out.append("timed out")
    return out
