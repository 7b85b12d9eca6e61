"""The chaos run (cnnopt/bench/chaos.py): its checks on hand-made trials, and the CI-size run itself
(3 runners x 3 workers on a throw-away PostgreSQL, SIGKILLed workers and runners, database and
proxy restarts), whose last line must report nothing lost, duplicated or wrongly failed."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, TrialState

from cnnopt.bench.chaos_checks import LaunchInfo, analyse, failures, final_line

from .conftest import require_pg_ctl

ROOT = Path(__file__).resolve().parents[1]
HOST = "box"
T0 = 1_000_000.0  # the kills' clock (time.time())


def trial(
    number: int,
    state: TrialState = TrialState.COMPLETE,
    pid: int | None = 100,
    epochs: int = 4,
    resumed: int | None = None,
    config: str | None = None,
    retry_of: list[int] | None = None,
    ended: float = T0 + 50,
    **user,
) -> FrozenTrial:
    """A stored trial as a worker of this harness leaves it."""
    attrs = {"config_hash": config or f"h{number}", **user}
    if pid is not None:
        attrs["worker"] = f"{HOST}:{pid}"
    if epochs:
        attrs["history"] = [{"epoch": e} for e in range(1, epochs + 1)]
    if resumed is not None:
        attrs["resumed_from_epoch"] = resumed
    system = {}
    if retry_of:
        system = {"failed_trial": retry_of[0], "retry_history": retry_of}
    done = state not in (TrialState.RUNNING, TrialState.WAITING)
    return FrozenTrial(
        number=number, state=state, value=0.5 if state == TrialState.COMPLETE else None,
        datetime_start=datetime.datetime.fromtimestamp(T0 + number),
        datetime_complete=datetime.datetime.fromtimestamp(ended) if done else None,
        params={"lr_k": number}, distributions={"lr_k": IntDistribution(0, 99)},
        user_attrs=attrs, system_attrs=system, intermediate_values={}, trial_id=number,
    )  # fmt: skip


def clean_study() -> tuple[list[FrozenTrial], list[LaunchInfo], dict[int, float]]:
    """Trial 1's worker was killed after epoch 2; its retry 2 resumed there; 3 copied 0."""
    trials = [
        trial(0, pid=100),
        trial(1, TrialState.FAIL, pid=101, epochs=2, fail_reason="worker 1 (pid 101) died"),
        trial(2, pid=102, resumed=2, retry_of=[1]),
        trial(3, pid=102, epochs=0, config="h0", duplicate_of=0),
    ]
    launches = [LaunchInfo(0, 3, [100, 101, 102], killed=False, rc=0)]
    return trials, launches, {101: T0 + 40}


def figures(trials, launches, kills, retry_failed=3) -> dict:
    f = analyse(trials, launches, kills, retry_failed, HOST)
    f.update(crashes=0, crash_lines=[], runner_errors=[], timed_out=False, faults=1,
             faults_by_kind={"worker_kill": 1})  # fmt: skip
    return f


def test_a_clean_study_passes_every_check():
    f = figures(*clean_study())
    assert failures(f) == []
    assert (f["trials"], f["finished"], f["resumed"], f["copies"], f["retries"]) == (3, 3, 1, 1, 1)
    assert final_line(f) == (
        "chaos: trials=3 finished=3 running=0 waiting=0 duplicated=0 wrongly_failed=0 "
        "lost_epochs=0 crashes=0 lost_requeues=0 faults=1 (worker_kill=1)"
    )


def test_a_failed_trial_whose_worker_was_not_killed_is_wrongly_failed():
    trials, launches, kills = clean_study()
    f = figures(trials, launches, {})  # the injector never killed pid 101
    assert f["wrongly_failed"] == 1 and "trial 1" in f["wrongly_failed_trials"][0]
    # killed, but only after its trial had been failed
    f = figures(trials, launches, {101: T0 + 60})
    assert f["wrongly_failed"] == 1


def test_an_untagged_trial_is_judged_by_the_worker_its_reason_names():
    trials, launches, kills = clean_study()
    trials[1] = trial(1, TrialState.FAIL, pid=None, epochs=0,
                      fail_reason="worker 1 (pid 101) died with exit code -9 before its trial started")  # fmt: skip
    assert figures(trials, launches, kills)["wrongly_failed"] == 0
    # created after that worker had died: somebody else's trial, failed by mistake
    assert figures(trials, launches, {101: T0 - 10})["wrongly_failed"] == 1


def test_a_retry_that_starts_over_loses_the_epochs_its_predecessor_stored():
    trials, launches, kills = clean_study()
    trials[2] = trial(2, pid=102, resumed=None, retry_of=[1])
    f = figures(trials, launches, kills)
    assert f["lost_epochs"] == 2 and f["resumed"] == 0
    assert (
        "trial 2 (retry of 1) resumed from epoch 0, an earlier attempt had stored epoch 2"
        in f["epoch_losses"][0]
    )


def test_the_owner_stored_with_the_trial_identifies_its_worker():
    trials, launches, kills = clean_study()
    trials[1] = trial(1, TrialState.FAIL, pid=None, epochs=0, ended=T0 + 45)
    trials[1].system_attrs["cnnopt:owner"] = f"run1/{HOST}:101"
    assert figures(trials, launches, kills)["wrongly_failed"] == 0
    trials[1].system_attrs["cnnopt:owner"] = f"run1/{HOST}:102"  # a worker that lived
    assert figures(trials, launches, kills)["wrongly_failed"] == 1


def test_the_epochs_of_every_earlier_attempt_count():
    """1 stored epoch 2; its retry 2 was killed before it stored one; retry 4 started over."""
    trials, launches, kills = clean_study()
    trials[2] = trial(2, TrialState.FAIL, pid=102, epochs=0, retry_of=[1], ended=T0 + 45)
    trials.append(trial(4, pid=103, config="h9", retry_of=[1, 2], params_count=10, epochs=0))
    launches[0].pids.append(103)
    kills[102] = T0 + 44
    f = figures(trials, launches, kills)
    assert f["lost_epochs"] == 2 and f["wrongly_failed"] == 0


def test_a_configuration_trained_twice_and_a_trial_finished_twice_are_duplicates():
    trials, launches, kills = clean_study()
    trials[3] = trial(3, pid=102, config="h0")  # trained again instead of copying trial 0
    assert figures(trials, launches, kills)["duplicated_trials"] == [3]
    trials, launches, kills = clean_study()
    trials.append(trial(4, pid=102, config="h9", retry_of=[1]))  # trial 1 re-queued twice
    launches[0].n_trials = 4
    assert figures(trials, launches, kills)["duplicated_trials"] == [4]


def test_leftovers_lost_requeues_and_a_wrong_count_are_reported():
    trials, launches, kills = clean_study()
    trials += [trial(4, TrialState.RUNNING), trial(5, TrialState.WAITING, pid=None, epochs=0)]
    trials[2] = trial(2, TrialState.FAIL, pid=101, epochs=0, retry_of=[1], ended=T0 + 45)
    f = figures(trials, launches, kills)
    assert (f["running"], f["waiting"], f["lost_requeues"]) == (1, 1, 1)
    assert f["launch_mismatch"] == ["launch 0: asked for 3, finished 2"]
    assert any("finished 2 trials, asked for 3" in line for line in failures(f))


def test_a_killed_runner_counts_what_its_workers_finished():
    trials, _, kills = clean_study()
    launches = [
        LaunchInfo(0, 3, [100, 101], killed=True, rc=-9),  # finished trial 0, then killed
        LaunchInfo(1, 2, [102], killed=False, rc=0),  # its restart: trials 2 and 3
    ]
    f = figures(trials, launches, kills)
    assert (f["trials"], f["finished"]) == (3, 3) and failures(f) == []


# -- the run itself, CI size ---------------------------------------------------------------------

LINE = re.compile(r"^chaos: (?P<figures>.*) faults=(?P<faults>\d+) \((?P<kinds>.*)\)$")


# Each takes 2 to 4 minutes on a 2-core machine: CI runs the direct one; the one through the
# proxy (which restarts the proxy too) runs with CNNOPT_CHAOS_PROXY=1, and in `make chaos-quick`.
PROXY_TOO = os.environ.get("CNNOPT_CHAOS_PROXY") == "1"


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize(
    "storage",
    [
        "direct",
        pytest.param(
            "proxy",
            marks=pytest.mark.skipif(not PROXY_TOO, reason="set CNNOPT_CHAOS_PROXY=1 to run it"),
        ),
    ],
)
def test_chaos_quick_ci_size(storage, tmp_path):
    """`make chaos-quick`: the CI size (3 runners x 3 workers, 21 trials, 9 faults); the full
    size (`make chaos`) is measured in docs/chaos.md, not here."""
    require_pg_ctl()
    out = tmp_path / "chaos.json"
    cmd = [sys.executable, "-m", "cnnopt.bench.chaos", "--quick", "--seed", "1", "--out", str(out),
           "--workdir", str(tmp_path / "work")]  # fmt: skip
    if storage == "proxy":
        cmd.append("--proxy")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    found = LINE.match(lines[-1])
    assert found, proc.stdout + proc.stderr[-3000:]
    values = dict(kv.split("=") for kv in found["figures"].split())
    detail = proc.stdout + "\n" + proc.stderr[-3000:]
    assert values["finished"] == values["trials"], detail
    for key in ("running", "waiting", "duplicated", "wrongly_failed", "lost_epochs", "crashes",
                "lost_requeues"):  # fmt: skip
        assert values[key] == "0", f"{key}: {detail}"
    kinds = dict(kv.split("=") for kv in found["kinds"].split())
    assert int(kinds["worker_kill"]) >= 1 and int(kinds["postgres_restart"]) >= 1, detail
    if storage == "proxy":
        assert int(kinds["proxy_restart"]) >= 1, detail
    assert proc.returncode == 0, detail
    result = json.loads(out.read_text())
    assert result["passed"] and result["line"] == lines[-1]
    assert result["faults"] == int(found["faults"]) >= 5
