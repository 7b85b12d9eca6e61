"""The storage proxy (`cnnopt storage proxy`, `--storage grpc://HOST:PORT`) against a real
PostgreSQL, as real processes: 32 clients through one proxy with the database's connections
counted, the proxy SIGKILLed and restarted mid-run, 4 `cnnopt run` workers, heartbeats of a
SIGKILLed client, and one-line errors."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import grpc  # noqa: F401 - imported before the forks, as the clients use it
import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cnnopt.errors import StorageError
from cnnopt.status import worker_status
from cnnopt.storage import (
    CREATE_TOKEN_KEY,
    HEARTBEAT_KEY,
    RetryingGrpcStorageProxy,
    RetryStaleTrialCallback,
    get_storage,
)

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "pw-PR0XY-s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """`cnnopt storage proxy` as a real process that a test can SIGKILL and start again."""

    def __init__(self, db_url: str, pool_size: int, tmp: Path):
        self.db_url = db_url
        self.pool_size = pool_size
        self.port = free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.log = tmp / "proxy.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "cnnopt.cli", "storage", "proxy", "--storage", self.db_url,
            "--port", str(self.port), "--pool-size", str(self.pool_size),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        end = time.time() + 60
        while time.time() < end:  # a TCP probe: no gRPC channel in this process before forks
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail("the proxy did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def proxy(postgres_url, tmp_path):
    """A proxy with a pool of 4 in front of a fresh database (its URL carries a password that
    trust auth ignores, so the log can be checked for it)."""
    db_url = sqlalchemy.engine.make_url(postgres_url).set(password=SECRET)
    p = Proxy(db_url.render_as_string(hide_password=False), 4, tmp_path)
    p.start()
    yield p
    p.stop()


def _db_name(proxy: Proxy) -> str:
    return sqlalchemy.engine.make_url(proxy.db_url).database


TEST_APP = "cnnopt-test-probe"  # the test's own connections, not counted


def probe_engine(db_url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(
        db_url,
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"application_name": TEST_APP},
    )


class ConnectionWatch:
    """Peak number of connections to one database, from pg_stat_activity every 20 ms."""

    def __init__(self, db_url: str):
        self.db = sqlalchemy.engine.make_url(db_url).database
        self.engine = probe_engine(db_url)
        self.peak = 0
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        q = sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND application_name <> :app"
        )
        with self.engine.connect() as conn:
            while not self._done.is_set():
                n = conn.execute(q, {"db": self.db, "app": TEST_APP}).scalar()
                self.peak = max(self.peak, n)
                self.samples += 1
                conn.commit()
                time.sleep(0.02)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()
        self.engine.dispose()


def _create_study(db_url: str, name: str) -> None:
    """Directly on the database, so that this process opens no gRPC channel before forking."""
    storage = get_storage(db_url, heartbeat=False)
    optuna.create_study(storage=storage, study_name=name)
    storage.engine.dispose()


class _Count(logging.Handler):
    """Counts this process's "connection lost" warnings of the storage retries."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        if "connection lost" in record.getMessage():
            with self.counter.get_lock():
                self.counter.value += 1


def _client(
    url: str, name: str, n: int, go, errors, pause: float = 0.0, gate=None, gate_at: int = 0,
    lost=None, at_gate=None,
) -> None:  # fmt: skip
    """Plain Optuna ask/tell of instant trials, through cnnopt's storage factory; with a
    ``gate``, trials from number ``gate_at`` on wait for it to open. ``lost`` counts the retries'
    "connection lost" warnings, ``at_gate`` the clients waiting at the gate."""
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore")
        if lost is not None:
            logging.getLogger("cnnopt.storage").addHandler(_Count(lost))
        study = optuna.load_study(
            study_name=name,
            storage=get_storage(url, heartbeat=False, connect_retry=60),
            sampler=optuna.samplers.RandomSampler(),
        )
        go.wait(60)
        for i in range(n):
            if gate is not None and i == gate_at:
                if at_gate is not None:
                    with at_gate.get_lock():
                        at_gate.value += 1
                gate.wait(240)
            trial = study.ask()
            x = trial.suggest_float("x", 0, 1)
            time.sleep(pause)
            study.tell(trial, x)
    except BaseException as e:  # noqa: BLE001
        errors.put(f"{type(e).__name__}: {str(e)[:300]}")
        raise


def _run_clients(proxy, name, n_clients, per_client, pause=0.0, during=None, gate_at=0):
    """``during(lost, at_gate)`` runs while the clients do (see ``_client``)."""
    ctx = mp.get_context("fork")  # optuna and grpc are imported once, here: 32 fit in 2 cores
    go, errors = ctx.Event(), ctx.Queue()
    gate = ctx.Event() if gate_at else None
    lost, at_gate = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [
        ctx.Process(
            target=_client,
            args=(proxy.url, name, per_client, go, errors, pause, gate, gate_at, lost, at_gate),
        )
        for _ in range(n_clients)
    ]
    for p in procs:
        p.start()
    t0 = time.time()
    with ConnectionWatch(proxy.db_url) as watch:
        go.set()
        if during is not None:
            during(lost, at_gate)
        if gate is not None:
            gate.set()
        for p in procs:
            p.join(timeout=240)
    seconds = time.time() - t0
    for p in procs:
        if p.is_alive():
            p.kill()
    errs = []
    while not errors.empty():
        errs.append(errors.get())
    assert not errs, errs[:3]
    assert [p.exitcode for p in procs] == [0] * n_clients
    return watch, seconds


def _wait_for(what: str, check, timeout: float = 120) -> None:
    """Poll ``check()`` until it is true; a guard against a hang, not a timing check."""
    end = time.time() + timeout
    while not check():
        if time.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _trials(proxy: Proxy, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = get_storage(proxy.db_url, heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


@pytest.mark.postgres
def test_32_clients_160_trials_through_one_proxy(proxy):
    """160 trials, exactly, from 32 client processes; the database sees at most the proxy's pool
    (4 connections), not one or two per client."""
    _create_study(proxy.db_url, "many")
    watch, seconds = _run_clients(proxy, "many", n_clients=32, per_client=5)
    trials = _trials(proxy, "many")
    assert len(trials) == 160
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(160))
    assert watch.samples > 5
    assert 1 <= watch.peak <= proxy.pool_size < 32, watch.peak
    print(
        f"32 clients, 160 trials through one proxy: {seconds:.1f} s, peak {watch.peak} "
        f"database connections (proxy pool {proxy.pool_size}; direct: 1 or 2 per client, 32-64)"
    )
    log = proxy.log.read_text()
    assert "***@" in log and SECRET not in log


@pytest.mark.postgres
def test_clients_ride_out_proxy_restarts(proxy):
    """The proxy is SIGKILLed twice mid-run and started again: the clients retry, and the study
    ends with exactly the trials asked for (a repeated trial creation leaves no stray trial).

    Both kills come while trials are left to run, however fast the machine: each client holds
    its last 5 trials until the second restart (the kills come at 20 and 60 of the 80 trials
    before that point). The proxy starts again only once a client has found it gone (a retry's
    "connection lost"), or every client waits at that hold and none can."""
    _create_study(proxy.db_url, "restart")
    n_clients, per_client, gate_at = 8, 15, 10
    db = probe_engine(proxy.db_url)

    def n_complete() -> int:
        with db.connect() as conn:
            return conn.execute(
                sqlalchemy.text("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")
            ).scalar()

    def restart_twice(lost, at_gate) -> None:
        for at in (20, 60):
            _wait_for(f"{at} complete trials", lambda: n_complete() >= at)  # noqa: B023
            before = lost.value
            proxy.kill()
            _wait_for(
                "a client to find the proxy gone",
                lambda: lost.value > before or at_gate.value == n_clients,  # noqa: B023
            )
            proxy.start()

    _run_clients(
        proxy, "restart", n_clients, per_client, pause=0.02, during=restart_twice, gate_at=gate_at
    )
    db.dispose()
    trials = _trials(proxy, "restart")
    assert len(trials) == n_clients * per_client, [t.state for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # each was created with its token (hidden from users, seen by the raw read)
    storage = get_storage(proxy.db_url, heartbeat=False)
    raw = storage.raw_trials(storage.get_study_id_from_name("restart"))
    storage.engine.dispose()
    assert len(raw) == len(trials) and all(t.system_attrs.get(CREATE_TOKEN_KEY) for t in raw)
    assert not any(CREATE_TOKEN_KEY in t.system_attrs for t in trials)
    assert proxy.log.read_text().count("storage proxy for") == 3


@pytest.mark.postgres
@pytest.mark.slow
def test_4_cnnopt_workers_through_the_proxy(proxy, tmp_path):
    """A real `cnnopt run --workers 4` through the proxy, which is SIGKILLed and restarted while
    trials run: exactly the 6 trials asked for, all finished; `cnnopt status` reads it too.

    The kill comes at a known point: once a trial has finished, the test hook holds every worker
    that starts a new trial (between ask and tag) until the proxy is gone, so the run cannot end
    before the kill, however fast the machine. Released then, such a worker's next call finds
    the proxy gone; it starts again once a worker has said so (a retry's "connection lost")."""
    hold = tmp_path / "hold"
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200",
        "CNNOPT_TEST_HOLD_BEFORE_TAG": str(hold),
    }  # fmt: skip
    study = str(ROOT / "studies" / "quick_synthetic.py")
    cmd = [
        sys.executable, "-m", "cnnopt.cli", "run", study, "--workers", "4", "--n-trials", "6",
        "--set", "epochs=2", "--storage", proxy.url, "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    log = tmp_path / "run.log"
    t0 = time.time()
    with ConnectionWatch(proxy.db_url) as watch, log.open("w") as sink:
        run = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        db = probe_engine(proxy.db_url)
        end = time.time() + 240
        started = 0
        while time.time() < end and run.poll() is None and started < 1:
            time.sleep(0.05)
            try:
                with db.connect() as conn:
                    started = conn.execute(
                        sqlalchemy.text("SELECT count(*) FROM trial_values")
                    ).scalar()
            except sqlalchemy.exc.ProgrammingError:
                pass  # tables not created yet
        hold.touch()  # 5 trials are left: at least one worker asks for one and waits here
        db.dispose()
        assert run.poll() is None, log.read_text()
        t_kill = time.time()
        proxy.kill()
        seen = len(log.read_text())
        hold.unlink()

        def found_gone() -> bool:
            assert run.poll() is None, log.read_text()
            return "connection lost" in log.read_text()[seen:]

        _wait_for("a worker to find the proxy gone", found_gone)
        proxy.start()
        try:
            run.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            pytest.fail("cnnopt run did not finish:\n" + log.read_text())
    out = log.read_text()
    assert run.returncode == 0, out
    trials = _trials(proxy, "quick_synthetic")
    assert len(trials) == 6, out
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), out
    assert all(HEARTBEAT_KEY in t.system_attrs for t in trials)  # heartbeats went through
    # 5 processes (runner + 4 workers) would hold 5 to 10 connections without the proxy: more
    # than its pool
    assert 1 <= watch.peak <= proxy.pool_size < 5, watch.peak
    status = subprocess.run(
        [sys.executable, "-m", "cnnopt.cli", "status", "quick_synthetic", "--storage", proxy.url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "quick_synthetic" in status.stdout
    print(
        f"4 cnnopt workers through the proxy: peak {watch.peak} database connections; "
        f"{t_kill - t0:.0f} s to the kill, {time.time() - t_kill:.0f} s after it"
    )
    print(out[-3000:])


def _kill_a_worker_mid_trial(url: str, proc) -> tuple[optuna.trial.FrozenTrial, int]:
    """SIGKILL the worker of a RUNNING trial that has trained an epoch. The worker is stopped
    (SIGSTOP) and the trial read again first: the kill lands mid-trial, however short it is."""
    from tests.test_runner_faults import load

    end = time.time() + 150
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            running = load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - study not created yet
            running = []
        for victim in running:
            if not victim.intermediate_values or "worker" not in victim.user_attrs:
                continue
            pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGSTOP)
            if load(url).get_trials(deepcopy=False)[victim.number].state == TrialState.RUNNING:
                os.kill(pid, signal.SIGKILL)
                return victim, pid
            os.kill(pid, signal.SIGCONT)  # it finished meanwhile
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no trial got to its first epoch in time:\n" + proc.communicate()[0])


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_worker_through_the_proxy(proxy, tmp_path):
    """A `cnnopt run` worker SIGKILLed mid-trial through the proxy: its runner fails the trial
    at once (by the trial's worker tag) and re-runs its params, as with the other storages."""
    from tests.test_runner_faults import FINISHED, finish, load, start_run

    proc = start_run(proxy.url, tmp_path, n_trials=2, epochs=6)
    victim, pid = _kill_a_worker_mid_trial(proxy.url, proc)
    out = finish(proc)
    assert proc.returncode == 0, out
    trials = load(proxy.url).get_trials()
    assert sum(t.state in FINISHED for t in trials) == 2, out
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert f"pid {pid}) died" in killed.user_attrs["fail_reason"]
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state in FINISHED and retry.params == victim.params


def _dying_client(url: str, name: str) -> None:
    """Starts a trial with heartbeats every second, then hangs until it is killed."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    storage = get_storage(url, connect_retry=30)
    storage.heartbeat_interval = 1
    study = optuna.load_study(study_name=name, storage=storage)

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        time.sleep(600)

    study.optimize(objective, n_trials=1)


@pytest.mark.postgres
def test_dead_client_trial_failed_by_heartbeat_through_the_proxy(proxy):
    """A client SIGKILLed mid-trial: its heartbeat (a trial attribute written through the proxy)
    stops; fail_stale_trials in another process fails the trial once it has seen the heartbeat
    unchanged for the grace period, and re-enqueues its params."""
    _create_study(proxy.db_url, "dead")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_dying_client, args=(proxy.url, "dead"))
    p.start()
    watcher = get_storage(proxy.url, retry_failed=1)
    assert isinstance(watcher, RetryingGrpcStorageProxy)
    watcher.grace_period = 3
    study = optuna.load_study(study_name="dead", storage=watcher)
    end = time.time() + 60
    beats = set()
    while time.time() < end and len(beats) < 3:  # the heartbeat moves while the client lives
        running = study.get_trials(states=(TrialState.RUNNING,))
        beats |= {t.system_attrs.get(HEARTBEAT_KEY) for t in running} - {None}
        optuna.storages.fail_stale_trials(study)  # alive: never stale
        time.sleep(0.2)
    assert len(beats) >= 3, beats
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    [alive] = worker_status(study, proxy.url)  # `cnnopt status` reads the same heartbeat
    assert alive.alive is True and alive.how.startswith("heartbeat"), alive
    p.kill()
    p.join()
    end = time.time() + 30
    while time.time() < end and study.get_trials()[0].state == TrialState.RUNNING:
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.2)
    first, retry = study.get_trials()
    assert first.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.params == first.params and retry.system_attrs["failed_trial"] == first.number
    assert HEARTBEAT_KEY in first.system_attrs and HEARTBEAT_KEY not in retry.system_attrs
    assert isinstance(watcher.get_heartbeat_stale_trial_callback(), RetryStaleTrialCallback)


class _LostReply(grpc.RpcError):
    """What the client sees when the proxy dies after doing the work, before replying."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "Socket closed"


@pytest.mark.postgres
def test_repeated_trial_creation_after_the_proxy_did_it_creates_one_trial(proxy):
    """The proxy created the trial, then the reply was lost: the retry finds the trial by its
    token instead of creating a second one. The same for the final state write."""
    storage = get_storage(proxy.url, heartbeat=False)
    study = optuna.create_study(storage=storage, study_name="token")
    real_create, real_state = storage._stub.CreateNewTrial, storage._stub.SetTrialStateValues
    calls = []

    def lost_after(real):
        def call(request):
            calls.append(request)
            reply = real(request)
            if len(calls) in (1, 2):  # the first creation and the first state write
                raise _LostReply()
            return reply

        return call

    storage._stub.CreateNewTrial = lost_after(real_create)
    storage._stub.SetTrialStateValues = lost_after(real_state)
    trial = study.ask()
    assert len(calls) == 1  # not sent again: found by its token
    study.tell(trial, 0.5)
    assert len(calls) == 3  # repeated; the proxy said 'finished', and it was our write: success
    trials = study.get_trials()
    assert [(t.number, t.state, t.value) for t in trials] == [(0, TrialState.COMPLETE, 0.5)]
    storage.close()


@pytest.mark.postgres
def test_dashboard_reads_through_the_proxy(proxy):
    """optuna-dashboard (what `cnnopt dashboard` serves) on the storage `cnnopt dashboard` opens
    for a grpc:// URL: the study and its trials come through the proxy."""
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    from cnnopt.status import open_storage

    storage = get_storage(proxy.url, heartbeat=False)
    study = optuna.create_study(storage=storage, study_name="dash")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    app = optuna_dashboard.wsgi(open_storage(proxy.url))

    def get(path: str) -> dict:
        environ: dict = {"PATH_INFO": path}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, _h, _e=None: status.append(s)))
        assert status[0].startswith("200"), (status, body[:200])
        return json.loads(body)

    [summary] = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == "dash"
    detail = get(f"/api/studies/{summary['study_id']}")
    assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
    storage.close()


def test_unreachable_proxy_is_one_line():
    port = free_port()
    with pytest.raises(StorageError) as e:
        get_storage(f"grpc://127.0.0.1:{port}")
    assert "\n" not in str(e.value)
    assert f"grpc://127.0.0.1:{port}" in str(e.value) and "cnnopt storage proxy" in str(e.value)
    with pytest.raises(StorageError, match="expected grpc://HOST:PORT"):
        get_storage("grpc://host:port:x")


def test_proxy_needs_a_database_server(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cnnopt.cli", "storage", "proxy", "--storage", "x.journal"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "cnnopt: error: storage x.journal: the storage proxy serves a database server "
        "(postgresql+psycopg2://... or mysql+pymysql://...)"
    ]


def test_a_repeated_study_creation_keeps_the_proxys_cache(tmp_path):
    """A `cnnopt run` that starts while the database restarts repeats create_new_study, and the
    repeat that finds the study reports success (storage.retry._RepeatSafe). Optuna's cache then
    put an empty record over the cached study, and every later GetTrial of a trial it had cached
    failed NOT_FOUND: the workers behind the proxy died of a KeyError."""
    from optuna.storages import RDBStorage
    from optuna.study import StudyDirection

    from cnnopt.proxy import _proxy_cache

    backend = RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    cache = _proxy_cache(backend)
    sid = cache.create_new_study([StudyDirection.MINIMIZE], "s")
    done = cache.create_new_trial(sid)
    cache.set_trial_state_values(done, TrialState.COMPLETE, [1.0])
    running = cache.create_new_trial(sid)
    assert len(cache.get_all_trials(sid)) == 2  # now cached
    backend.create_new_study = lambda directions, study_name=None: sid  # the repeat's success
    assert cache.create_new_study([StudyDirection.MINIMIZE], "s") == sid
    assert cache.get_trial(done).state == TrialState.COMPLETE
    assert cache.get_trial(running).state == TrialState.RUNNING
    assert [t.number for t in cache.get_all_trials(sid)] == [0, 1]
