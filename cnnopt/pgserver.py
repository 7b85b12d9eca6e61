"""`cnnopt storage up|down|url`: a local PostgreSQL server for users who have none running.

It uses the server binaries already on the machine (``initdb``/``pg_ctl`` on PATH or under
/usr/lib/postgresql/*/bin), keeps everything under ``storage/postgres/`` (``data/`` the cluster,
``server.log``, ``server.json`` the port, ``pgpass`` the password), listens on 127.0.0.1 only (no
Unix socket, so it never collides with a system server), on port 5433 or the first free one after.

Authentication is scram-sha-256 with a random password kept in ``storage/postgres/pgpass``
(mode 600); the URL names that file (``?passfile=...``, a libpq parameter) instead of carrying the
password, so the URL can be printed, logged and pasted into ``--storage`` safely.

initdb and postgres refuse to run as root: as root, the server runs as the ``postgres`` user (which
owns ``storage/postgres/``) through ``runuser``.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from cnnopt.errors import StorageError
from cnnopt.storage import STORAGE_DIR

DEFAULT_ROOT = STORAGE_DIR / "postgres"
DEFAULT_PORT = 5433
DATABASE = "cnnopt"
USER = "cnnopt"
DOCKER_HINT = "docker compose -f docker/compose.yaml up -d postgres"
INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin. "
    "Install them (Debian/Ubuntu: `sudo apt install postgresql`; Fedora: `sudo dnf install "
    "postgresql-server`; macOS: `brew install postgresql`), or run PostgreSQL in docker: "
    f"`{DOCKER_HINT}` and use --storage "
    "postgresql+psycopg2://cnnopt:cnnopt@127.0.0.1:5432/cnnopt"
)
# what `storage up` adds to postgresql.conf
SERVER_CONF = """
# -- cnnopt storage up --
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
"""


def _version_key(path: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.findall(r"\d+|\D+", path))


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: $CNNOPT_PG_BIN, PATH, then the newest of
    /usr/lib/postgresql/*/bin (Debian/Ubuntu), /usr/pgsql-*/bin (RHEL), Homebrew's."""
    candidates: list[str] = []
    if os.environ.get("CNNOPT_PG_BIN"):
        candidates.append(os.environ["CNNOPT_PG_BIN"])
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for pattern in (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/opt/homebrew/opt/postgresql*/bin",
    ):
        candidates += sorted(glob.glob(pattern), key=_version_key, reverse=True)
    candidates += ["/usr/local/pgsql/bin", "/usr/local/opt/postgresql/bin"]
    for c in candidates:
        d = Path(c)
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start: int = DEFAULT_PORT, tries: int = 100) -> int:
    for port in range(start, start + tries):
        if port_is_free(port):
            return port
    raise StorageError(f"no free port in {start}..{start + tries - 1} on 127.0.0.1")


class PgServer:
    """A PostgreSQL cluster under ``root`` (default ``storage/postgres``)."""

    def __init__(self, root: str | Path = DEFAULT_ROOT):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.state_file = self.root / "server.json"
        self.passfile = self.root / "pgpass"

    # -- running the binaries ---------------------------------------------------------------

    def _bin(self) -> Path:
        d = find_bin_dir()
        if d is None:
            raise StorageError(INSTALL_HINT)
        return d

    def _server_user(self) -> str | None:
        """None: run the binaries as ourselves; else the user to run them as (we are root)."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise StorageError(
                "initdb and postgres refuse to run as root, and there is no `postgres` user to "
                "run the server as: run `cnnopt storage up` as a normal user (or create the user "
                f"`postgres`), or use docker: `{DOCKER_HINT}`"
            ) from None
        if not shutil.which("runuser"):
            raise StorageError(
                "running as root: the server must run as user `postgres`, but `runuser` is missing"
            )
        return "postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self._bin() / args[0]), *args[1:]]
        user = self._server_user()
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=str(self.root)
        )

    def _check(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            detail = lines[-1] if lines else f"exit code {proc.returncode}"
            raise StorageError(f"{what} failed: {detail} (log: {self.log})")

    # -- state ----------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port of the running server (postmaster.pid line 4), else the remembered one."""
        pid_file = self.data / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            return int(lines[3])
        except (OSError, IndexError, ValueError):
            pass
        try:
            return int(json.loads(self.state_file.read_text())["port"])
        except (OSError, KeyError, ValueError):
            return None

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists() or find_bin_dir() is None:
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data), timeout=30).returncode == 0

    def url(self) -> str:
        """The SQLAlchemy URL of the running server (no password in it: see ``passfile``)."""
        if not self.running():
            raise StorageError(
                f"no local PostgreSQL is running from {self.root}: start it with "
                "`cnnopt storage up`"
            )
        return self._url(self.port)

    def _url(self, port: int | None) -> str:
        return (
            f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{DATABASE}"
            f"?passfile={quote(str(self.passfile), safe='/')}"
        )

    # -- up / down ------------------------------------------------------------------------

    def _prepare_root(self, user: str | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not user:
            return
        pw = pwd.getpwnam(user)
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        for parent in self.root.parents:
            st = parent.stat()
            if st.st_uid != pw.pw_uid and not st.st_mode & 0o001:
                raise StorageError(
                    f"the server runs as user {user} (initdb refuses root), who cannot enter "
                    f"{parent}: `chmod o+x {parent}`, or run from another folder"
                )

    def _initdb(self, user: str | None) -> None:
        password = secrets.token_urlsafe(24)
        pwfile = self.root / "initdb.pw"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        if user:
            pw = pwd.getpwnam(user)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            proc = self._run(
                "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        self._check(proc, "initdb")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(SERVER_CONF)
        # libpq's password file: host:port:database:user:password, readable only by us
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"127.0.0.1:*:*:{USER}:{password}\n")

    def up(self, port: int | None = None) -> str:
        """Start the server (initialising it the first time) and create the database; returns
        the URL. Already running: returns its URL."""
        self._bin()
        user = self._server_user()
        self._prepare_root(user)
        if not (self.data / "PG_VERSION").exists():
            if self.data.exists():
                shutil.rmtree(self.data)  # a half-made cluster from an interrupted initdb
            self._initdb(user)
        if self.running():
            return self._url(self.port)
        port = port or free_port(self.remembered_port() or DEFAULT_PORT)
        if not port_is_free(port):
            raise StorageError(f"port {port} on 127.0.0.1 is in use: choose another with --port")
        self._start(port)
        self.state_file.write_text(json.dumps({"port": port, "bin": str(self._bin())}) + "\n")
        self._create_database(port)
        return self._url(port)

    def remembered_port(self) -> int | None:
        try:
            return int(json.loads(self.state_file.read_text())["port"])
        except (OSError, KeyError, ValueError):
            return None

    def _start(self, port: int) -> None:
        proc = self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", f"-p {port}",
        )  # fmt: skip
        self._check(proc, "pg_ctl start")

    def _create_database(self, port: int) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(
                    host="127.0.0.1", port=port, user=USER, dbname="postgres",
                    passfile=str(self.passfile), connect_timeout=5,
                )  # fmt: skip
                break
            except psycopg2.OperationalError as e:
                if time.monotonic() > deadline:
                    raise StorageError(f"cannot connect to the new server: {e}") from None
                time.sleep(0.3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            conn.close()

    def down(self) -> bool:
        """Stop the server (fast shutdown: open sessions are ended). False if it was not running."""
        if not self.running():
            return False
        self._check(self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w"), "stop")
        return True

    def restart(self) -> None:
        """Stop and start again on the same port (for fault tests)."""
        port = self.port
        self.down()
        self._start(port)


# -- databases on a server (the chaos run's and the tests' throw-away ones) -------------------------


def connect(url: str, timeout: int = 3):
    """A psycopg2 connection to the database of a SQLAlchemy URL (its query options, such as
    ``passfile``, passed on): for what SQLAlchemy cannot do inside a transaction."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return psycopg2.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        dbname=u.database or "postgres",
        connect_timeout=timeout,
        **{k: v for k, v in u.query.items() if isinstance(v, str)},
    )


def create_database(server_url: str, prefix: str) -> tuple[str, str]:
    """A fresh database ``PREFIX_PID_RANDOM`` on the server: (its URL, its name). Errors are
    psycopg2's (no server, no CREATEDB right): the caller says what they mean for it."""
    import uuid

    from sqlalchemy.engine import make_url

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = connect(server_url)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False), name


def drop_database(server_url: str, name: str) -> None:
    """Drop a database, closing its connections (WITH FORCE: a killed worker's may linger)."""
    conn = connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()
