"""Fault tolerance of `cnnopt run`, as real processes: a worker SIGKILLed mid-trial, PostgreSQL
restarted mid-study, Ctrl-C (SIGINT) and a re-run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from cnnopt.storage import get_storage, is_file_storage

from .conftest import require_pg_ctl

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "quick_synthetic.py")
NAME = "quick_synthetic"
SECRET = "pw-S3CRET-x9"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def with_password(url: str) -> str:
    """Give the URL a password (ignored by trust auth) so the output can be checked for it."""
    u = make_url(url)
    if u.password:
        return url
    return u.set(password=SECRET).render_as_string(hide_password=False)


def secret_of(url: str) -> str | None:
    return None if is_file_storage(url) else make_url(url).password


def start_run(
    url: str,
    cwd: Path,
    n_trials: int,
    epochs: int = 2,
    workers: int = 2,
    extra: tuple = (),
    env: dict | None = None,
):
    cmd = [
        sys.executable, "-m", "cnnopt.cli", "run", STUDY, "--workers", str(workers),
        "--n-trials", str(n_trials), "--set", f"epochs={epochs}",
        "--storage", url, "--device", "cpu", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})}
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def hold_after_epoch(hold: Path, from_epoch: int = 1) -> dict:
    """The env of a run whose trials wait after each epoch (from ``from_epoch`` on) while ``hold``
    exists, or until the run stops (a test hook in cnnopt.objective): the test catches a trial
    mid-way by an event, not by timing, on a fast or a loaded machine alike."""
    hold.touch()
    return {
        "CNNOPT_TEST_HOLD_AFTER_EPOCH": str(hold),
        "CNNOPT_TEST_HOLD_FROM_EPOCH": str(from_epoch),
    }


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=get_storage(url, heartbeat=False))


def wait_mid_trial(
    url: str, proc, timeout: float = 150, count: int = 1, epochs: int = 1
) -> optuna.trial.FrozenTrial:
    """A RUNNING trial that has finished at least ``epochs`` epochs (once ``count`` have); a
    guard against a hang, not a timing check: the run's trials wait there (hold_after_epoch)."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            mid = [
                t
                for t in load(url).get_trials(states=(TrialState.RUNNING,))
                if len(t.intermediate_values) >= epochs and "worker" in t.user_attrs
            ]
            if len(mid) >= count:
                return mid[0]
        except (KeyError, ValueError, Exception):  # noqa: BLE001 - study not created yet
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no trial got to its first epoch in time:\n" + proc.communicate()[0])


def finish(proc, timeout: float = 600) -> str:
    # a guard against a hung run, not a timing check: a loaded 2-core CI machine can be many
    # times slower than a quiet one
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("cnnopt run did not finish:\n" + proc.communicate()[0])
    return out


@pytest.fixture(params=["postgres", "journal"])
def any_url(request, tmp_path):
    if request.param == "postgres":
        return with_password(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "study.journal")


@pytest.mark.slow
def test_sigkill_worker_mid_trial(any_url, tmp_path):
    hold = tmp_path / "hold"
    proc = start_run(any_url, tmp_path, n_trials=3, env=hold_after_epoch(hold))
    victim = wait_mid_trial(any_url, proc)  # waiting after its first epoch
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    import psutil

    assert psutil.Process(pid).ppid() == proc.pid  # a worker of this run
    os.kill(pid, signal.SIGKILL)
    hold.unlink()  # the other worker goes on
    out = finish(proc)
    assert proc.returncode == 0, out
    trials = load(any_url).get_trials()
    states = [t.state for t in trials]
    assert sum(s in FINISHED for s in states) == 3, out
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert f"pid {pid}) died" in killed.user_attrs["fail_reason"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == victim.params
    assert "fail_reason" not in retries[0].user_attrs
    if secret_of(any_url):
        assert secret_of(any_url) not in out


@pytest.mark.slow
def test_a_worker_killed_mid_event_leaves_the_others_reporting(tmp_path):
    """A worker killed while sending an event to the runner (half the message on its pipe) must
    not stop the others: with one queue shared by all workers, the dead writer kept the queue's
    write lock, every other worker blocked on it and the run hung with its trials done."""
    url = str(tmp_path / "study.journal")
    cut = tmp_path / "cut"
    cut.touch()
    proc = start_run(url, tmp_path, n_trials=4, env={"CNNOPT_TEST_DIE_MID_EVENT": str(cut)})
    out = finish(proc)
    assert proc.returncode == 0, out
    assert not cut.exists()  # a worker did die mid-event
    deaths = [ln for ln in out.splitlines() if ln.startswith("cnnopt: worker") and "died" in ln]
    assert len(deaths) == 1 and "exit code -9" in deaths[0], out
    trials = load(url).get_trials()
    assert sum(t.state in FINISHED for t in trials) == 4, out
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state in FINISHED and retry.params == dead.params
    # every finished trial's end reached the runner, those after the death included
    for t in trials:
        if t.state in FINISHED:
            assert re.search(rf"trial +{t.number} (complete|pruned) ", out), out


def worker_pids(proc) -> list[int]:
    """The run's worker processes (multiprocessing spawn children, not its resource tracker)."""
    import psutil

    return [
        c.pid for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())
    ]


@pytest.mark.slow
def test_worker_killed_between_ask_and_tag_leaves_no_running_trial(any_url, tmp_path):
    """A worker that dies after study.ask() created its trial but before the trial carries the
    worker's tag: the runner cannot find that trial by tag, and must still not leave it RUNNING."""
    hold = tmp_path / "hold"
    hold.touch()  # workers wait between ask and tag while this file exists
    proc = start_run(
        any_url, tmp_path, n_trials=2, epochs=1, workers=1,
        env={"CNNOPT_TEST_HOLD_BEFORE_TAG": str(hold)},
    )  # fmt: skip
    end, orphan = time.time() + 120, None
    while time.time() < end and orphan is None:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            running = load(any_url).get_trials(states=(TrialState.RUNNING,))
            orphan = next((t for t in running if "worker" not in t.user_attrs), None)
        except Exception:  # noqa: BLE001 - study not created yet
            pass
        time.sleep(0.2)
    assert orphan is not None, "no worker reached the window between ask and tag"
    (pid,) = worker_pids(proc)
    os.kill(pid, signal.SIGKILL)
    hold.unlink()  # the replacement worker goes on
    out = finish(proc)
    assert proc.returncode == 0, out
    trials = load(any_url).get_trials()
    assert [t.state for t in trials].count(TrialState.RUNNING) == 0, out
    assert sum(t.state in FINISHED for t in trials) == 2, out  # the ticket was given back
    dead = trials[orphan.number]
    assert dead.state == TrialState.FAIL
    assert f"(pid {pid}) died" in dead.user_attrs["fail_reason"]


def wait_for(what: str, check, procs=(), timeout: float = 150):
    """Poll ``check()`` (storage reads) until it returns something true; fail if a run ends
    first or nothing happens in ``timeout`` (a guard against a hang, not a timing check)."""
    end = time.time() + timeout
    while time.time() < end:
        for p in procs:
            assert p.poll() is None, f"run ended while waiting for {what}:\n" + p.communicate()[0]
        try:
            found = check()
        except Exception:  # noqa: BLE001 - study not created yet
            found = None
        if found:
            return found
        time.sleep(0.2)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_runner_never_fails_another_runners_trial(tmp_path):
    """Two `cnnopt run` processes on one study. Runner A's worker dies while its new trial
    carries no tag yet; runner B's trial carries no tag either, for as long as B's worker stalls
    (a test hook holds it between ask and tag, longer than any settle time). A fails its own
    trial, never B's, and B's worker, released, finishes its trial."""
    url = str(tmp_path / "shared.journal")
    hold_a, hold_b = tmp_path / "hold-a", tmp_path / "hold-b"
    hold_a.touch()
    hold_b.touch()
    runs = {}
    for name, hold in (("a", hold_a), ("b", hold_b)):
        cwd = tmp_path / name
        cwd.mkdir()
        runs[name] = start_run(
            url, cwd, n_trials=1, epochs=1, workers=1,
            env={"CNNOPT_TEST_HOLD_BEFORE_TAG": str(hold)},
        )  # fmt: skip
    procs = list(runs.values())

    def two_untagged():
        running = load(url).get_trials(states=(TrialState.RUNNING,))
        return len([t for t in running if "worker" not in t.user_attrs]) == 2

    wait_for("both runners' trials", two_untagged, procs)
    (pid,) = worker_pids(runs["a"])
    os.kill(pid, signal.SIGKILL)
    hold_a.unlink()  # A's replacement worker goes on
    # A has handled its dead worker once its replacement has finished A's one trial
    wait_for(
        "runner A's replacement trial",
        lambda: any(t.state in FINISHED for t in load(url).get_trials()),
        procs,
    )
    states = [t.state for t in load(url).get_trials()]
    assert states.count(TrialState.FAIL) == 1, states  # A's orphan only
    hold_b.unlink()
    outs = {name: finish(p) for name, p in runs.items()}
    assert runs["a"].returncode == 0 and runs["b"].returncode == 0, outs
    assert "Cannot tell" not in outs["b"] and "died" not in outs["b"], outs["b"]
    trials = load(url).get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    assert sum(t.state in FINISHED for t in trials) == 2, outs
    assert TrialState.RUNNING not in [t.state for t in trials]
    [orphan] = [t for t in trials if t.state == TrialState.FAIL]
    assert f"(pid {pid}) died" in orphan.user_attrs["fail_reason"]


@pytest.mark.slow
def test_worker_whose_trial_another_process_failed_goes_on(tmp_path):
    """Another process fails a live worker's trial (as a stale-trial check may): the worker's
    Optuna then cannot record the trial. It says so in one line and runs the next trial; the
    run ends with the trials asked for, no worker died."""
    from cnnopt.recovery import fail_trial

    url = str(tmp_path / "study.journal")
    hold = tmp_path / "hold"
    hold.touch()
    proc = start_run(
        url, tmp_path, n_trials=2, epochs=1, workers=1,
        env={"CNNOPT_TEST_HOLD_BEFORE_TAG": str(hold)},
    )  # fmt: skip
    victim = wait_for(
        "a trial", lambda: load(url).get_trials(states=(TrialState.RUNNING,)), [proc]
    )[0]
    study = load(url)
    fail_trial(study, victim._trial_id, "failed by another process", 0)
    assert load(url).get_trials()[victim.number].state == TrialState.FAIL
    hold.unlink()
    out = finish(proc)
    assert proc.returncode == 0, out
    assert out.count("was ended by another process; going on") == 1, out  # one line
    assert "Traceback" not in out and "died with exit code" not in out, out
    trials = load(url).get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    assert sum(t.state in FINISHED for t in trials) == 2, out  # its ticket came back


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restart_mid_study():
    from cnnopt.pgserver import PgServer

    require_pg_ctl()
    root = Path(tempfile.mkdtemp(prefix="cnnopt-pgrestart-"))
    cwd = Path(tempfile.mkdtemp(prefix="cnnopt-run-"))
    server = PgServer(root)
    try:
        url = server.up()
        hold = cwd / "hold"
        proc = start_run(url, cwd, n_trials=4, env=hold_after_epoch(hold))
        wait_mid_trial(url, proc)
        before = {t.number: t.value for t in load(url).get_trials(states=FINISHED)}
        port = server.port
        server.down()  # fast shutdown: every session is cut
        hold.unlink()  # the workers go on, into the outage (the pruner reads the storage at once)
        time.sleep(3)
        server._start(port)
        out = finish(proc)
        assert proc.returncode == 0, out
        trials = load(url).get_trials()
        assert [t.state for t in trials].count(TrialState.RUNNING) == 0
        assert sum(t.state in FINISHED for t in trials) == 4, out
        assert all(trials[n].value == v for n, v in before.items())
        assert "connection lost" in out  # the workers did ride it out (and said so)
    finally:
        server.down()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.postgres
def test_ctrl_c_then_rerun(postgres_url, tmp_path):
    url = with_password(postgres_url)
    proc = start_run(url, tmp_path, n_trials=2, env=hold_after_epoch(tmp_path / "hold"))
    wait_mid_trial(url, proc, count=2)  # both workers wait after their trial's first epoch
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    out = finish(proc)
    assert proc.returncode == 130, out
    # it stopped mid-trial (not after finishing its trials): no worker had to be killed, and
    # every trial it was running is interrupted, not complete
    assert "did not stop within" not in out, out
    trials = load(url).get_trials()
    assert TrialState.RUNNING not in [t.state for t in trials]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all("interrupted" in t.user_attrs["fail_reason"] for t in interrupted)
    assert SECRET not in out

    proc = start_run(url, tmp_path, n_trials=2)
    out = finish(proc)
    assert proc.returncode == 0, out
    trials = load(url).get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    for t in interrupted:  # each interrupted trial's params were run again, to the end
        reruns = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(reruns) == 1 and reruns[0].state in FINISHED
        assert reruns[0].params == t.params


def test_checkpoint_store_resume_and_keep_best(tmp_path):
    """A retried trial finds its original's checkpoint; a completed trial's checkpoint is kept
    only while it is the best (best.pt), pruned/failed ones are discarded."""
    from cnnopt.checkpoint import CheckpointStore

    store = CheckpointStore("s", "val_accuracy", "maximize", root=tmp_path)
    study = optuna.create_study(direction="maximize")

    def ckpt(epoch, acc):
        return {"model": {}, "optimizer": {}, "scheduler": None, "epoch": epoch, "config": {},
                "history": [{"epoch": epoch, "metrics": {"val_accuracy": acc}}]}  # fmt: skip

    first = study.ask()
    assert store.load_for(first) is None
    store.saver(first)(ckpt(2, 0.5))
    assert store.path(first.number).exists()
    study.tell(first, state=TrialState.FAIL)  # its worker "died"
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs={"failed_trial": first.number}
        )
    )
    retry = study.ask()
    resumed = store.load_for(retry)
    assert resumed is not None and resumed["epoch"] == 2
    store.saver(retry)(ckpt(3, 0.6))  # goes on writing the original's file
    store.finished(retry)
    assert store.best_path.exists()
    assert store.best_info() == {"trial": retry.number, "value": 0.6}
    # kept until the trial is recorded: a worker killed before that leaves a retry to resume it
    assert store.load_for(retry)["epoch"] == 3
    study.tell(retry, 0.6)
    store.discard(study.trials[retry.number])
    assert not store.path(first.number).exists() and store.best_path.exists()

    worse = study.ask()
    store.saver(worse)(ckpt(3, 0.4))
    store.finished(worse)
    study.tell(worse, 0.4)
    store.discard(study.trials[worse.number])
    assert not store.path(worse.number).exists()
    assert store.best_info()["trial"] == retry.number

    pruned = study.ask()
    store.saver(pruned)(ckpt(1, 0.1))
    study.tell(pruned, state=TrialState.PRUNED)
    store.discard(study.trials[pruned.number])
    assert not store.path(pruned.number).exists()


@pytest.mark.slow
def test_killed_trial_resumes_from_its_checkpoint(tmp_path):
    import psutil

    url = str(tmp_path / "study.journal")
    hold = tmp_path / "hold"
    # the trial waits after its third epoch (checkpointed) until the test has killed its worker
    proc = start_run(
        url, tmp_path, n_trials=1, epochs=5, workers=1, extra=("--set", "checkpoint=true"),
        env=hold_after_epoch(hold, from_epoch=3),
    )  # fmt: skip
    victim = wait_mid_trial(url, proc, epochs=3)
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    assert psutil.Process(pid).ppid() == proc.pid
    os.kill(pid, signal.SIGKILL)
    hold.unlink()  # the replacement worker goes on
    out = finish(proc)
    assert proc.returncode == 0, out
    trials = load(url).get_trials()
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state in FINISHED, out
    start = retry.user_attrs["resumed_from_epoch"]
    assert start >= 3  # it went on from the checkpoint, not from epoch 0
    assert [h["epoch"] for h in retry.user_attrs["history"]][:start] == list(range(1, start + 1))
    assert sorted(retry.intermediate_values)[0] == 1  # the curve is whole


def test_a_runner_killed_whole_on_a_journal_file_gets_its_trial_back_on_rerun(tmp_path):
    """The journal file has no heartbeats: a re-run on the same machine proves the killed run's
    runner and worker gone (their pids, in the trial's owner) and re-queues the trial."""
    import psutil

    url = str(tmp_path / "study.journal")
    hold = tmp_path / "hold"
    proc = start_run(url, tmp_path, n_trials=1, epochs=2, workers=1, env=hold_after_epoch(hold))
    victim = wait_mid_trial(url, proc)
    worker = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, as the OOM killer or a
    proc.communicate()  # closed terminal would
    try:  # the orphaned worker dies of its SIGKILL a moment later
        psutil.Process(worker).wait(timeout=30)
    except psutil.NoSuchProcess:
        pass
    assert load(url).get_trials()[victim.number].state == TrialState.RUNNING
    hold.unlink()
    out = finish(start_run(url, tmp_path, n_trials=1, epochs=2, workers=1))
    trials = load(url).get_trials()
    failed = trials[victim.number]
    assert failed.state == TrialState.FAIL, out
    assert "are gone from this machine" in failed.user_attrs["fail_reason"]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state in FINISHED and retry.params == victim.params, out
    assert not [t for t in trials if t.state == TrialState.RUNNING]
