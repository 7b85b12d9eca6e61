"""The chaos run: several `cnnopt run` processes on one PostgreSQL study, under injected faults.

``python -m cnnopt.bench.chaos [--quick] [--proxy] [--seed N] [--out FILE]`` (``make chaos``,
``make chaos-quick``). It

1. starts a throw-away PostgreSQL server (initdb/pg_ctl in a temporary folder, so restarting it
   disturbs nobody; ``--postgres URL`` uses an existing server instead) and creates a fresh database;
2. writes a tiny study (synthetic data, a few epochs, checkpoints on, a discrete space so that
   samplers repeat configurations and deduplication has work to do);
3. starts ``--runners`` x ``cnnopt run --workers W --n-trials n`` on it, directly or (``--proxy``)
   through a ``cnnopt storage proxy``;
4. injects ``--faults`` faults at seeded random points of the study's progress: SIGKILL of one
   worker (found with psutil among a runner's children), SIGKILL of a whole runner with its
   workers (its process group: a lost machine or pod), restarted at once with the same command
   as a cluster scheduler would; a PostgreSQL restart; with ``--proxy`` a SIGKILL and restart of
   the proxy;
5. when every runner has ended, reads the study and checks, from what is stored:
   - ``finished``: COMPLETE + PRUNED trials equal ``trials``, what the runners asked for: each
     runner that ended by itself adds its ``--n-trials``; one that was killed adds the trials its
     workers had finished (its restart, the same command, adds its ``--n-trials`` again);
   - ``running``/``waiting``: no trial left RUNNING or WAITING;
   - ``duplicated``: no configuration (``config_hash``) trained to the end twice, and no trial
     (with its retries) finished twice;
   - ``wrongly_failed``: every FAIL trial belongs to a process the injector killed, failed after
     the kill (its ``worker`` tag, or the pid its fail reason names for a trial that died before
     it was tagged); ``crashes``: no worker died that the injector did not kill (the runners'
     logs);
   - ``lost_epochs``: each retry of a checkpointed trial resumed from the last epoch its
     predecessor stored (its ``resumed_from_epoch`` against the predecessor's ``history``);
   - ``lost_requeues``: every failed trial with retries left was re-queued.

The last line is for scripts; the exit code is 1 if any check fails::

    chaos: trials=N finished=N running=0 waiting=0 duplicated=0 wrongly_failed=0 lost_epochs=0
    crashes=0 lost_requeues=0 faults=K (worker_kill=a runner_kill=b postgres_restart=c)

Heartbeats: a killed runner leaves its trials RUNNING with nobody to fail them at once; Optuna's
heartbeats do it after the grace period (180 s by default). The run sets a short one
($CNNOPT_HEARTBEAT_INTERVAL / $CNNOPT_GRACE_PERIOD, ``--grace``) so that such trials come back
within the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnopt import pgserver
from cnnopt.bench.chaos_checks import LaunchInfo, _pid_of_tag, analyse, failures, final_line

ROOT = Path(__file__).resolve().parents[2]
STUDY_NAME = "chaos"
SHARED_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
KINDS = ("worker_kill", "runner_kill", "postgres_restart", "proxy_restart")
# how often each kind is drawn (proxy_restart only with --proxy)
WEIGHTS = {"worker_kill": 5, "runner_kill": 1, "postgres_restart": 2.5, "proxy_restart": 2.5}

STUDY_SOURCE = '''"""The chaos run's study (written by cnnopt.bench.chaos): seconds-long trials, checkpoints on."""

name = "{name}"
dataset = "synthetic"
family = "cnn"
conv_blocks = 2
filters = [4, 8]
hidden = []
global_pool = True
epochs = {epochs}
batch_size = 32
sampler = "random"
pruner = "median"
n_startup_trials = 4
n_warmup_steps = {warmup}  # pruned at the last epoch but one at the earliest: epochs to kill in
checkpoint = True
retry_failed = {retry_failed}
seed = {seed}
artifacts = "none"


def space(trial):
    # a discrete space ({configs} configurations, more than the run trains): samplers propose
    # configurations again, so deduplication has twins to catch
    k = trial.suggest_int("lr_k", 0, {lr_steps})
    return {{
        "lr": round(0.002 + 0.008 * k / {lr_steps}, 6),
        "batchnorm": trial.suggest_categorical("batchnorm", ["none", "after"]),
    }}
'''


@dataclass
class ChaosOptions:
    runners: int = 3
    workers: int = 3
    trials: int = 300  # what the first launches ask for in all (split over the runners)
    faults: int = 70
    epochs: int = 4
    seed: int = 0
    proxy: bool = False
    postgres: str | None = None  # None: a throw-away server
    pg_restart_cmd: str | None = None  # how to restart --postgres's server (else: no restarts)
    retry_failed: int = 3
    heartbeat: int = 2
    grace: int = 20
    timeout: float = 1800.0
    min_gap: float = 2.0  # seconds between two faults
    weights: dict[str, float] = field(default_factory=dict)  # over WEIGHTS
    out: str | None = None
    workdir: str | None = None
    keep: bool = False
    verbose: bool = True


PRESETS = {
    "quick": dict(trials=21, faults=9, epochs=4, timeout=600.0, min_gap=1.5),
    "full": dict(trials=300, faults=70, epochs=4, timeout=2700.0, min_gap=2.0),
}


@dataclass
class Launch:
    """One start of one runner command (a restart is a new Launch of the same slot)."""

    id: int
    slot: int
    n_trials: int
    proc: subprocess.Popen
    log: Path
    started: float
    pids: set[int] = field(default_factory=set)  # its workers (every one seen)
    killed_at: float | None = None
    ended: float | None = None
    rc: int | None = None
    worker_kills: int = 0

    @property
    def alive(self) -> bool:
        return self.ended is None


class ChaosError(Exception):
    """The run could not be set up (no server binaries, a database refused): one line."""


def log(opts: ChaosOptions, msg: str) -> None:
    if opts.verbose:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the fault plan ------------------------------------------------------------------------------


def plan_faults(
    rng: random.Random, n: int, kinds: Iterable[str], weights: dict[str, float] | None = None
) -> list[tuple[float, str]]:
    """``n`` faults as (fraction of the first launches' trials finished, kind), sorted: at least
    one of each kind, the rest drawn by ``WEIGHTS``. Spread
    over 3%..85% of the run, so the last re-queued trials still find a runner; runner kills in
    the first half only (a restarted runner must live longer than the grace period)."""
    kinds = list(kinds)
    by_kind = {**WEIGHTS, **(weights or {})}
    kinds = [k for k in kinds if by_kind[k] > 0]
    weights_ = [by_kind[k] for k in kinds]
    plan = []
    for i in range(n):
        # one of each kind first (a short run still has them all), then drawn by weight
        kind = kinds[i] if i < len(kinds) else rng.choices(kinds, weights_)[0]
        hi = 0.5 if kind == "runner_kill" else 0.85
        plan.append((round(rng.uniform(0.03, hi), 4), kind))
    return sorted(plan)


# -- PostgreSQL and the proxy ---------------------------------------------------------------------


def create_database(server_url: str) -> tuple[str, str]:
    try:
        return pgserver.create_database(server_url, "cnnopt_chaos")
    except Exception as e:  # noqa: BLE001 - no server, no right: one line
        raise ChaosError(
            f"cannot create a database on {_mask(server_url)}: {_first_line(e)}"
        ) from None


def drop_database(server_url: str, name: str) -> None:
    with contextlib.suppress(Exception):
        pgserver.drop_database(server_url, name)


def _mask(url: str) -> str:
    from cnnopt.storage import mask_url

    return mask_url(url)


def _first_line(e: BaseException) -> str:
    return _mask((str(e).strip().splitlines() or [type(e).__name__])[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """``cnnopt storage proxy`` as a process the injector SIGKILLs and starts again."""

    def __init__(self, db_url: str, workdir: Path, env: dict[str, str]):
        self.db_url = db_url
        self.port = free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.log = workdir / "proxy.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "cnnopt.cli", "storage", "proxy", "--storage", self.db_url,
            "--port", str(self.port),
        ]  # fmt: skip
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        end = time.time() + 120
        while time.time() < end:  # a TCP probe: the port answers once gRPC serves
            if self.proc.poll() is not None:
                raise ChaosError(f"the storage proxy exited: see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise ChaosError(f"the storage proxy did not start within 120 s: see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


# -- processes ------------------------------------------------------------------------------------


def worker_pids(runner_pid: int) -> list[int]:
    """The worker processes of a `cnnopt run` (multiprocessing spawn children; not its resource
    tracker)."""
    import psutil

    try:
        children = psutil.Process(runner_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for c in children:
        try:
            if "spawn_main" in " ".join(c.cmdline()):
                out.append(c.pid)
        except psutil.Error:
            continue
    return sorted(out)


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


# -- the run ----------------------------------------------------------------------------------------


class Chaos:
    def __init__(self, opts: ChaosOptions):
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.launches: list[Launch] = []
        self.kills: dict[int, float] = {}  # pid -> when the injector killed it
        self.faults: list[dict[str, Any]] = []
        self.errors: list[str] = []  # runner exits that were no fault of the injector's
        self.refused = 0  # runner starts refused while the storage restarted (restarted again)
        self.proxy: Proxy | None = None
        self.server = None  # cnnopt.pgserver.PgServer of a throw-away server
        self.timed_out = False
        self.pending: tuple[float, bool] | None = None  # a fault waiting for its target
        self.not_injected: list[str] = []

    # setup and teardown

    def setup(self, workdir: Path) -> None:
        opts = self.opts
        self.workdir = workdir
        if opts.postgres:
            server_url = opts.postgres
        else:
            from cnnopt.pgserver import PgServer, find_bin_dir

            if find_bin_dir() is None:
                raise ChaosError(
                    "no initdb/pg_ctl for a throw-away PostgreSQL server: install the server "
                    f"binaries, or pass --postgres {SHARED_POSTGRES} (and --pg-restart-cmd to "
                    "restart it)"
                )
            # not under the work folder: as root the server runs as `postgres`, who must reach it
            self.pg_root = Path(tempfile.mkdtemp(prefix="cnnopt-chaos-pg-"))
            self.server = PgServer(self.pg_root)
            server_url = self.server.up()
        self.server_url = server_url
        self.db_url, self.db_name = create_database(server_url)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "CNNOPT_HEARTBEAT_INTERVAL": str(opts.heartbeat),
            "CNNOPT_GRACE_PERIOD": str(opts.grace),
            "CNNOPT_ARTIFACTS": "none",
            "COLUMNS": "200",
        }
        self.env.pop("CNNOPT_STORAGE", None)
        if opts.proxy:
            self.proxy = Proxy(self.db_url, workdir, self.env)
            self.proxy.start()
        self.url = self.proxy.url if self.proxy else self.db_url
        lr_steps = max(20, 2 * opts.trials)  # 2 x that many configurations: never used up
        self.study_path = workdir / "chaos_study.py"
        self.study_path.write_text(
            STUDY_SOURCE.format(
                name=STUDY_NAME,
                epochs=opts.epochs,
                warmup=max(1, opts.epochs - 1),
                retry_failed=opts.retry_failed,
                seed=opts.seed,
                lr_steps=lr_steps,
                configs=2 * (lr_steps + 1),
            )
        )

    def teardown(self) -> None:
        for launch in self.launches:
            if launch.alive:
                self._killpg(launch.proc.pid)
                launch.proc.wait()
        if self.proxy is not None:
            self.proxy.kill()
        if getattr(self, "db_name", None) and not self.opts.keep:
            drop_database(self.server_url, self.db_name)
        if self.server is not None and not self.opts.keep:
            with contextlib.suppress(Exception):
                self.server.down()
            shutil.rmtree(self.pg_root, ignore_errors=True)

    # runners

    def command(self, n_trials: int) -> list[str]:
        return [
            sys.executable, "-m", "cnnopt.cli", "run", str(self.study_path),
            "--workers", str(self.opts.workers), "--n-trials", str(n_trials),
            "--storage", self.url, "--device", "cpu", "--no-progress",
        ]  # fmt: skip

    def launch(self, slot: int, n_trials: int) -> Launch:
        lid = len(self.launches)
        path = self.workdir / f"runner{slot}-launch{lid}.log"
        with path.open("w") as out:
            out.write(" ".join(self.command(n_trials)) + "\n")
            out.flush()
            # its own session: a runner kill takes its workers with it (a lost machine)
            proc = subprocess.Popen(
                self.command(n_trials), cwd=self.workdir, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        launch = Launch(lid, slot, n_trials, proc, path, time.time())
        self.launches.append(launch)
        return launch

    @staticmethod
    def _killpg(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def poll(self) -> None:
        """Note new worker pids; reap ended runners (restart those refused at start)."""
        for launch in self.launches:
            if not launch.alive:
                continue
            launch.pids.update(worker_pids(launch.proc.pid))
            rc = launch.proc.poll()
            if rc is None:
                continue
            launch.rc, launch.ended = rc, time.time()
            if rc == 0:
                continue
            text = launch.log.read_text(errors="replace").strip().splitlines()
            last = text[-1] if text else f"exit code {rc}"
            if not launch.pids and re.search(
                r"cannot open storage|cannot reach the storage proxy", last
            ):
                # started while the database or proxy restarted: a one-line refusal; the
                # scheduler starts it again (its trials are not begun, nothing is counted)
                self.refused += 1
                self.launch(launch.slot, launch.n_trials)
            else:
                self.errors.append(f"runner {launch.slot} (launch {launch.id}) exit {rc}: {last}")

    def finished_count(self) -> int | None:
        try:
            conn = pgserver.connect(self.db_url, timeout=2)
        except Exception:  # noqa: BLE001 - the database is restarting: ask again later
            return None
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = %s AND t.state IN ('COMPLETE', 'PRUNED')",
                    (STUDY_NAME,),
                )
                return int(cur.fetchone()[0])
        except Exception:  # noqa: BLE001 - no tables yet, or the server went away
            return None
        finally:
            conn.close()

    def heartbeat_of(self, trial_id: int) -> str | None:
        """The trial's last heartbeat in the database's table (direct storage), or None."""
        with (
            contextlib.suppress(Exception),
            contextlib.closing(pgserver.connect(self.db_url)) as conn,
        ):
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT heartbeat FROM trial_heartbeats WHERE trial_id = %s", (trial_id,)
                )
                row = cur.fetchone()
                return row[0].isoformat() if row else None
        return None

    def mid_trial_pids(self) -> set[int]:
        """Pids of the workers whose RUNNING trial has trained and stored at least one epoch."""
        try:
            conn = pgserver.connect(self.db_url, timeout=2)
        except Exception:  # noqa: BLE001
            return set()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT a.value_json FROM trials t "
                    "JOIN studies s ON s.study_id = t.study_id "
                    "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'worker' "
                    "WHERE s.study_name = %s AND t.state = 'RUNNING' AND EXISTS ("
                    "SELECT 1 FROM trial_user_attributes h "
                    "WHERE h.trial_id = t.trial_id AND h.key = 'history')",
                    (STUDY_NAME,),
                )
                tags = [json.loads(row[0]) for row in cur.fetchall()]
        except Exception:  # noqa: BLE001
            return set()
        finally:
            conn.close()
        host = socket.gethostname()
        return {p for p in (_pid_of_tag(tag, host) for tag in tags) if p is not None}

    # faults

    def inject(self, kind: str, progress: int) -> bool:
        """Inject one fault; False if it has no target now (tried again on the next tick)."""
        opts = self.opts
        now = time.time()
        if self.pending is None:  # (since when, aim at a worker in mid-training)
            self.pending = (now, self.rng.random() < 0.7)
        event: dict[str, Any] = {"kind": kind, "t": round(now - self.t0, 2), "finished": progress}
        if kind == "worker_kill":
            cap = 3 * opts.workers - 1  # a runner replaces at most 3 x workers dead workers
            targets = [
                (launch.id, pid)
                for launch in self.launches
                if launch.alive and launch.worker_kills < cap
                for pid in worker_pids(launch.proc.pid)
            ]
            if not targets:
                return False
            # mostly a worker in the middle of training (its retry must resume from the
            # checkpoint; waited for up to 15 s), else any worker (asking, waiting for or
            # copying a twin, between trials)
            since, aim = self.pending
            if aim:
                mid = {t for t in targets if t[1] in self.mid_trial_pids()}
                if mid:
                    targets = sorted(mid)
                elif now - since < 15:
                    return False
            lid, pid = self.rng.choice(sorted(targets))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return False
            self.kills[pid] = now
            self.launches[lid].worker_kills += 1
            event.update(launch=lid, pid=pid)
        elif kind == "runner_kill":
            targets = [launch for launch in self.launches if launch.alive and launch.pids]
            if not targets:
                return False
            launch = self.rng.choice(targets)
            pids = [launch.proc.pid, *descendants(launch.proc.pid)]
            self._killpg(launch.proc.pid)
            launch.proc.wait()
            launch.killed_at = now
            launch.rc, launch.ended = launch.proc.returncode, time.time()
            launch.pids.update(p for p in pids if p != launch.proc.pid)
            for p in pids:
                self.kills[p] = now
            # the scheduler starts the same command again
            new = self.launch(launch.slot, launch.n_trials)
            event.update(launch=launch.id, pids=pids, restarted_as=new.id)
        elif kind == "postgres_restart":
            if self.server is not None:
                self.server.restart()
            elif opts.pg_restart_cmd:
                subprocess.run(opts.pg_restart_cmd, shell=True, check=True, timeout=120)
            else:
                return False
            event["seconds"] = round(time.time() - now, 2)
        elif kind == "proxy_restart":
            assert self.proxy is not None
            self.proxy.kill()
            self.proxy.start()
            event["seconds"] = round(time.time() - now, 2)
        self.pending = None
        self.faults.append(event)
        log(opts, f"fault {len(self.faults)}: {kind} at {progress} finished trials")
        return True

    # the whole run

    def run(self) -> dict[str, Any]:
        opts = self.opts
        kinds = ["worker_kill", "runner_kill"]
        if self.server is not None or opts.pg_restart_cmd:
            kinds.append("postgres_restart")
        if opts.proxy:
            kinds.append("proxy_restart")
        plan = plan_faults(self.rng, opts.faults, kinds, opts.weights)
        per_runner = [
            opts.trials // opts.runners + (1 if i < opts.trials % opts.runners else 0)
            for i in range(opts.runners)
        ]
        self.t0 = time.time()
        for slot, n in enumerate(per_runner):
            self.launch(slot, n)
        log(opts, f"{opts.runners} runners x {opts.workers} workers on {_mask(self.url)}")
        last_fault, last_log, progress = 0.0, 0.0, 0
        while any(launch.alive for launch in self.launches):
            if time.time() - self.t0 > opts.timeout:
                self.timed_out = True
                log(opts, f"timed out after {opts.timeout:.0f} s: stopping every runner")
                break
            self.poll()
            count = self.finished_count()
            progress = count if count is not None else progress
            if (
                plan
                and progress >= plan[0][0] * opts.trials
                and time.time() - last_fault >= opts.min_gap
            ):
                if self.inject(plan[0][1], progress):
                    plan.pop(0)
                    last_fault = time.time()
                elif self.pending is not None and time.time() - self.pending[0] > 30:
                    # no target for 30 s (every live runner had its share of worker kills)
                    self.not_injected.append(plan.pop(0)[1])
                    self.pending = None
            if time.time() - last_log > 15:
                last_log = time.time()
                live = sum(launch.alive for launch in self.launches)
                log(opts, f"{progress} finished, {len(self.faults)} faults, {live} runners live")
            time.sleep(0.2)
        self.seconds = time.time() - self.t0
        self.not_injected += [kind for _, kind in plan]
        for launch in self.launches:
            if launch.alive:  # timed out
                self._killpg(launch.proc.pid)
                launch.proc.wait()
                launch.rc, launch.ended = launch.proc.returncode, time.time()
        return self.report()

    def report(self) -> dict[str, Any]:
        import optuna

        from cnnopt.storage import get_storage

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        storage = get_storage(self.db_url, heartbeat=False, connect_retry=60)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        raw = getattr(storage, "raw_trials", None)  # with cnnopt's bookkeeping (the owner)
        trials = raw(study._study_id) if raw else study.get_trials(deepcopy=False)
        crashes = []
        for launch in self.launches:
            text = launch.log.read_text(errors="replace")
            for m in re.finditer(r"worker \d+ \(pid (\d+)\) died with exit code (-?\d+)", text):
                if int(m.group(1)) not in self.kills:
                    crashes.append(f"launch {launch.id}: {m.group(0)}")
        figures = analyse(
            trials,
            [
                LaunchInfo(lc.id, lc.n_trials, sorted(lc.pids), lc.killed_at is not None, lc.rc)
                for lc in self.launches
            ],
            self.kills,
            self.opts.retry_failed,
            socket.gethostname(),
        )
        ids = {t.number: t._trial_id for t in trials}
        for left in figures["left_unfinished"]:
            left["heartbeat"] = self.heartbeat_of(ids[left["number"]])
        faults_by_kind = {k: sum(f["kind"] == k for f in self.faults) for k in KINDS}
        figures.update(
            crashes=len(crashes),
            crash_lines=crashes,
            runner_errors=self.errors,
            runner_starts_refused=self.refused,
            timed_out=self.timed_out,
            faults=len(self.faults),
            faults_by_kind={k: v for k, v in faults_by_kind.items() if v or k != "proxy_restart"},
            faults_not_injected=self.not_injected,
            fault_log=self.faults,
            seconds=round(self.seconds, 1),
        )
        return figures


# -- command line ---------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> ChaosOptions:
    p = argparse.ArgumentParser(
        prog="python -m cnnopt.bench.chaos",
        description="Several `cnnopt run` processes on one PostgreSQL study under injected faults "
        "(worker and runner SIGKILLs, PostgreSQL and proxy restarts); checks that no trial is "
        "lost, duplicated or wrongly failed.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"the CI size ({PRESETS['quick']})")
    size.add_argument("--full", action="store_true", help="the full size (default)")
    p.add_argument("--proxy", action="store_true", help="through a `cnnopt storage proxy`")
    p.add_argument("--runners", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--trials", type=int, help="trials the first launches ask for, in all")
    p.add_argument("--faults", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--postgres",
        metavar="URL",
        help="an existing server to create the study's database on (e.g. "
        f"{SHARED_POSTGRES}); default: a throw-away server (initdb/pg_ctl), which the "
        "injector restarts",
    )
    p.add_argument(
        "--pg-restart-cmd",
        help="shell command that restarts --postgres's server (without it: no PostgreSQL "
        "restarts), e.g. 'pg_ctlcluster --skip-systemctl-redirect 15 main restart'",
    )
    p.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="KIND=W",
        help=f"how often a kind of fault is drawn (default {WEIGHTS}; 0: never)",
    )
    p.add_argument("--grace", type=int, help="heartbeat grace period, s (default 20)")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--workdir", help="keep the runners' logs and checkpoints here")
    p.add_argument("--keep", action="store_true", help="keep the database and server")
    p.add_argument("-q", "--quiet", action="store_true", help="only the result")
    a = p.parse_args(argv)
    opts = ChaosOptions(**PRESETS["quick" if a.quick else "full"])
    for key in ("runners", "workers", "trials", "faults", "epochs", "grace", "timeout"):
        if getattr(a, key) is not None:
            setattr(opts, key, getattr(a, key))
    for key in ("proxy", "seed", "postgres", "pg_restart_cmd", "out", "workdir", "keep"):
        setattr(opts, key, getattr(a, key))
    opts.verbose = not a.quiet
    for item in a.weight:
        kind, _, value = item.partition("=")
        try:
            opts.weights[kind] = float(value)
        except ValueError:
            p.error(f"--weight {item!r}: expected KIND=NUMBER")
        if kind not in WEIGHTS:
            p.error(f"--weight {item!r}: the kinds are {', '.join(WEIGHTS)}")
    if opts.runners < 1 or opts.workers < 1 or opts.trials < opts.runners:
        p.error("need --runners >= 1, --workers >= 1 and --trials >= --runners")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("chaos: error: needs psutil (pip install psutil, or cnnopt[dev])", file=sys.stderr)
        return 2
    tmp = None
    if opts.workdir:
        workdir = Path(opts.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="cnnopt-chaos-")
        workdir = Path(tmp)
    chaos = Chaos(opts)
    started = datetime.datetime.now(datetime.UTC)
    from cnnopt.bench.common import loadavg, machine_info

    machine = machine_info()
    try:
        chaos.setup(workdir)
        figures = chaos.run()
    except ChaosError as e:
        print(f"chaos: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130
    finally:
        chaos.teardown()
        if tmp and not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    bad = failures(figures)
    machine["load_average_end"] = loadavg()
    result = {
        "command": " ".join(["python -m cnnopt.bench.chaos", *(argv or sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"),
        "options": {k: v for k, v in asdict(opts).items() if k not in ("verbose",)},
        "storage": "proxy" if opts.proxy else "direct",
        "machine": machine,
        **figures,
        "passed": not bad,
        "failures": bad,
    }
    result["line"] = final_line(figures)
    if opts.out:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(
        f"chaos: {'proxy' if opts.proxy else 'direct'}, {opts.runners} runners x {opts.workers} "
        f"workers, {len(figures['launches'])} launches, {figures['seconds']:.0f} s; stored "
        f"{figures['states']}; {figures['copies']} copies of a twin, {figures['retries']} "
        f"retries, {figures['resumed']} resumed from a checkpoint, "
        f"{figures['runner_starts_refused']} runner starts refused during a restart"
    )
    for line in bad:
        print(f"chaos: FAILED: {line}")
    print(result["line"])
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
