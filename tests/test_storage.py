"""Storage layer against a real PostgreSQL: engine settings under 16 concurrent workers, retries
on lost connections, repeat-safe writes, the old-schema message, password masking."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import warnings

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cnnopt.errors import StorageError
from cnnopt.storage import (
    RetryingRDBStorage,
    engine_kwargs,
    get_storage,
    mask_url,
    max_connections,
)

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_mask_url():
    assert (
        mask_url("postgresql+psycopg2://u:s3cr:et@h:5432/db")
        == "postgresql+psycopg2://u:***@h:5432/db"
    )
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert (
        mask_url("error for postgresql://u:pw@h/db here")
        == "error for postgresql://u:***@h/db here"
    )
    assert "pw" not in mask_url("host=h password=pw dbname=x")
    assert mask_url("storage/x.journal") == "storage/x.journal"


def _worker(url: str, n: int, ready, errors) -> None:
    try:
        warnings.filterwarnings("ignore")
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.load_study(
            study_name="conc", storage=get_storage(url), sampler=optuna.samplers.RandomSampler()
        )
        ready.wait(60)  # every worker has loaded the study: their trials run concurrently
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    except BaseException as e:  # noqa: BLE001
        errors.put(f"{type(e).__name__}: {e}")
        raise


@pytest.mark.postgres
@pytest.mark.slow
def test_16_workers_80_trials(postgres_url):
    n_workers, per_worker = 16, 5
    storage = get_storage(postgres_url)
    optuna.create_study(storage=storage, study_name="conc")
    storage.engine.dispose()  # no inherited connections in the forked workers
    db = sqlalchemy.engine.make_url(postgres_url).database

    peak = [0]
    done = threading.Event()
    monitor = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)

    def watch() -> None:
        with monitor.connect() as conn:
            q = sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
            )
            while not done.is_set():
                peak[0] = max(peak[0], conn.execute(q, {"db": db}).scalar())
                conn.commit()
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ctx = mp.get_context("fork")
    ready, errors = ctx.Barrier(n_workers), ctx.Queue()
    t0 = time.time()
    procs = [
        ctx.Process(target=_worker, args=(postgres_url, per_worker, ready, errors))
        for _ in range(n_workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    done.set()
    watcher.join()
    monitor.dispose()
    errs = []
    while not errors.empty():
        errs.append(errors.get())
    assert not errs, errs
    assert [p.exitcode for p in procs] == [0] * n_workers

    study = optuna.load_study(study_name="conc", storage=get_storage(postgres_url))
    trials = study.get_trials()
    assert len(trials) == n_workers * per_worker
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(n_workers * per_worker))
    # 16 worker processes of 2 connections at most; a `cnnopt run` adds its runner: 2 * (N + 1)
    assert 0 < peak[0] <= 2 * n_workers <= max_connections(n_workers), peak[0]
    print(f"16 workers, {len(trials)} trials: {time.time() - t0:.1f} s, peak {peak[0]} connections")


def _kill_in_flight(url: str, call):
    """Run ``call()`` while another session holds a lock it needs; once the call's backend is
    waiting on that lock, terminate the backend (what a database restart or failover does to a
    query in flight), then release the lock. ``call`` raises whatever the storage raises."""
    db = sqlalchemy.engine.make_url(url).database
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    with admin.connect() as blocker, admin.connect() as killer:
        blocker.execute(
            sqlalchemy.text("LOCK TABLE trial_user_attributes IN ACCESS EXCLUSIVE MODE")
        )
        t = threading.Thread(target=run)
        t.start()
        waiting = sqlalchemy.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid()"
        )
        end, pids = time.time() + 20, []
        while time.time() < end and not pids:
            pids = killer.execute(waiting, {"db": db}).scalars().all()
            killer.commit()
            time.sleep(0.05)
        assert len(pids) == 1, "the storage call never blocked on the lock"
        killer.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
        killer.commit()
        # the backend is gone before the lock is released: the call cannot finish on it
        alive = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
        end = time.time() + 20
        while time.time() < end and killer.execute(alive, {"pid": pids[0]}).scalar():
            killer.commit()
            time.sleep(0.02)
        assert not killer.execute(alive, {"pid": pids[0]}).scalar(), "the backend lives on"
        killer.commit()
        blocker.rollback()  # release the lock: a retried call goes through
        t.join(60)
    admin.dispose()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.mark.postgres
def test_call_whose_connection_is_killed_in_flight_is_retried(postgres_url, caplog):
    """The connection dies under a call that is running (not an idle pooled one, which
    pool_pre_ping would replace silently): the storage reconnects and repeats the call."""
    storage = get_storage(postgres_url, heartbeat=False)
    assert isinstance(storage, RetryingRDBStorage)
    trial = optuna.create_study(storage=storage, study_name="kill").ask()
    with caplog.at_level("WARNING", logger="cnnopt.storage"):
        _kill_in_flight(postgres_url, lambda: storage.set_trial_user_attr(trial._trial_id, "k", 7))
    retries = [r.message for r in caplog.records if "set_trial_user_attr" in r.message]
    assert retries and "connection lost" in retries[0] and "retry 1" in retries[0]
    assert storage.get_trial(trial._trial_id).user_attrs == {"k": 7}


@pytest.mark.postgres
def test_plain_rdb_storage_fails_the_same_kill(postgres_url):
    """The same kill without the retries is an error: the test above measures the retrying."""
    url = postgres_url
    plain = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    trial = optuna.create_study(storage=plain, study_name="plain").ask()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        _kill_in_flight(url, lambda: plain.set_trial_user_attr(trial._trial_id, "k", 7))
    assert plain.get_trial(trial._trial_id).user_attrs == {}


@pytest.mark.postgres
def test_repeated_state_write_after_commit_is_success(postgres_url, monkeypatch):
    """The connection breaks after the COMPLETE was committed: the retried write finds the trial
    finished with our state and value, and reports success instead of UpdateFinishedTrialError."""
    storage = get_storage(postgres_url)
    study = optuna.create_study(storage=storage, study_name="repeat")
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_state_values
    calls = []

    def flaky(self, trial_id, state, values=None):
        result = real(self, trial_id, state, values)
        calls.append(state)
        if len(calls) == 1:  # committed, then the connection "breaks"
            raise sqlalchemy.exc.OperationalError(
                "COMMIT", {}, Exception("server closed the connection")
            )
        return result

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", flaky)
    assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5]) is True
    assert len(calls) == 1  # the retry found it committed (UpdateFinishedTrialError path)
    monkeypatch.undo()
    t = storage.get_trial(trial._trial_id)
    assert t.state == TrialState.COMPLETE and t.value == 0.5
    # a different outcome is still an error
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


@pytest.mark.postgres
def test_old_schema_gives_one_line_error(postgres_url):
    storage = get_storage(postgres_url)
    versions = storage.get_all_versions()
    older = versions[1]  # walk_revisions: head first
    storage.engine.dispose()
    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = :v"), {"v": older})
        conn.execute(sqlalchemy.text("UPDATE version_info SET library_version = '2.10.0'"))
    engine.dispose()
    with pytest.raises(StorageError) as e:
        get_storage(postgres_url)
    msg = str(e.value)
    assert "\n" not in msg
    assert "optuna storage upgrade --storage URL" in msg
    assert "Optuna 2.10.0" in msg


def test_unreachable_server_is_one_masked_line():
    with pytest.raises(StorageError) as e:
        get_storage("postgresql+psycopg2://u:topsecret@127.0.0.1:1/db")
    assert "\n" not in str(e.value) and "topsecret" not in str(e.value)
    assert "u:***@127.0.0.1:1/db" in str(e.value)


def _wait_for(what: str, check, timeout: float = 30) -> None:
    """Poll ``check()`` until it is true; a guard against a hang, not a timing check."""
    end = time.time() + timeout
    while not check():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.slow
def test_heartbeat_outlives_an_outage_longer_than_the_retries(pg_server, caplog):
    """The database is down for longer than a storage call retries while a trial trains: the
    heartbeat thread must live on and beat again once the server is back, so another process's
    stale check does not fail the live trial (which would then run twice). Windows are scaled
    down: beats every 1 s, retries for 1 s, grace period 6 s; the outage lasts until a beat has
    been given up (its retries ran out)."""
    caplog.set_level("WARNING", logger="cnnopt.storage")
    url = pg_server.url()
    storage = RetryingRDBStorage(
        url, engine_kwargs=engine_kwargs(url), heartbeat_interval=1, grace_period=6,
        retry_seconds=1,
    )  # fmt: skip
    study = optuna.create_study(storage=storage, study_name="hb")
    training, done = threading.Event(), threading.Event()

    def objective(trial):
        training.set()
        assert done.wait(60)
        return 1.0

    beat = sqlalchemy.text("SELECT max(heartbeat) FROM trial_heartbeats")

    def latest_beat():
        probe = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with probe.connect() as conn:
                return conn.execute(beat).scalar()
        finally:
            probe.dispose()

    def given_up() -> bool:
        return any("not recorded" in r.getMessage() for r in caplog.records)

    worker = threading.Thread(target=study.optimize, args=(objective,), kwargs={"n_trials": 1})
    worker.start()
    try:
        assert training.wait(30)
        _wait_for("a first beat", lambda: latest_beat() is not None)
        first = latest_beat()
        _wait_for("a second beat before the outage", lambda: latest_beat() > first)
        port = pg_server.port
        assert not given_up()
        pg_server.down()  # every session is cut; connections are refused
        _wait_for("a beat given up after its retries", given_up)  # > the retry window
        pg_server._start(port)
        # the beats resume: wait (up to 20 s, the machine may be busy) for one newer than the restart
        probe = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with probe.connect() as conn:
            restarted = conn.execute(sqlalchemy.text("SELECT now()::timestamp")).scalar()
            end = time.time() + 20
            while time.time() < end and not conn.execute(beat).scalar() > restarted:
                conn.commit()
                time.sleep(0.2)
            assert conn.execute(beat).scalar() > restarted, "no heartbeat after the outage"
        probe.dispose()
        # what another worker or the runner does: fail the trials whose heartbeat is stale
        checker = RetryingRDBStorage(
            url, engine_kwargs=engine_kwargs(url), heartbeat_interval=1, grace_period=6
        )
        other = optuna.load_study(study_name="hb", storage=checker)
        optuna.storages.fail_stale_trials(other)
        assert [t.state for t in other.get_trials()] == [TrialState.RUNNING]
    finally:
        done.set()
        worker.join(60)
    assert [t.state for t in other.get_trials()] == [TrialState.COMPLETE]


def test_heartbeat_settings_from_the_environment(monkeypatch):
    from cnnopt.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, heartbeat_settings

    monkeypatch.delenv("CNNOPT_HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.delenv("CNNOPT_GRACE_PERIOD", raising=False)
    assert heartbeat_settings() == (HEARTBEAT_INTERVAL, GRACE_PERIOD)
    monkeypatch.setenv("CNNOPT_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("CNNOPT_GRACE_PERIOD", "20")
    assert heartbeat_settings() == (2, 20)
    monkeypatch.setenv("CNNOPT_GRACE_PERIOD", "20s")
    with pytest.raises(StorageError, match=r"CNNOPT_GRACE_PERIOD='20s': expected a whole number"):
        heartbeat_settings()
    monkeypatch.setenv("CNNOPT_GRACE_PERIOD", "2")
    with pytest.raises(StorageError, match="must be longer than the heartbeat interval 2"):
        heartbeat_settings()


@pytest.mark.parametrize("enqueued", [False, True])
def test_a_trial_has_a_heartbeat_before_its_worker_runs_it(tmp_path, monkeypatch, enqueued):
    """A worker killed with its whole machine between study.ask() and the start of Optuna's
    heartbeat thread left a RUNNING trial without a heartbeat, which Optuna's stale check never
    fails and no runner is left to fail: it stayed RUNNING for good. The trial's first heartbeat
    now comes with its creation (or just before its claim), so it goes stale like any other."""
    from cnnopt.storage import get_storage

    monkeypatch.setenv("CNNOPT_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("CNNOPT_GRACE_PERIOD", "2")
    url = f"sqlite:///{tmp_path / 'hb.sqlite3'}"
    study = optuna.create_study(storage=get_storage(url), study_name="hb")
    if enqueued:
        study.enqueue_trial({"x": 1.0})
    trial = study.ask()  # no heartbeat thread: the worker "dies" here
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # the grace period has passed
        beats = conn.execute(
            sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'")
        )
        assert beats.rowcount == 1
    optuna.storages.fail_stale_trials(study)
    assert study.trials[trial.number].state == TrialState.FAIL
