"""A team tracking server to try out: PostgreSQL + ``mlflow server`` with MLflow's basic authentication.

An operations tool, not part of the medvision package: it needs the ``server`` extra (``pip install -e
'.[server]'``: psycopg, MLflow's PostgreSQL driver, and Flask-WTF for MLflow's basic-auth app) and Debian's
``postgresql`` (``make install`` provides both). Start it with ``scripts/team-server`` (the README's "For a team").

One folder holds everything, readable by its owner only:

* PostgreSQL (``initdb`` + ``pg_ctl`` from the Debian package) on **no TCP port**: it listens on a Unix socket in
  ``FOLDER/sockets`` (mode 0700, owned by the account PostgreSQL runs as), and every connection must give a
  password (``scram-sha-256``; no ``trust``, no ``peer``). PostgreSQL refuses to run as root, so under root it
  runs as the ``postgres`` user the package creates. The superuser's password is generated into
  ``FOLDER/postgres.pgpass``; MLflow connects as the role ``mlflow`` (owner of the ``mlflow`` and ``mlflow_auth``
  databases, not a superuser) with the password in ``FOLDER/mlflow.pgpass``, read by libpq through
  ``PGPASSFILE``: no password is on any command line (``ps``), in any URI or in the auth config file.
* ``mlflow server --app-name basic-auth`` bound to 127.0.0.1, serving a shared artifact root
  (``--artifacts-destination``), so clients need no access to the server's disk. It runs with umask 077: artifact
  folders are 0700 and files 0600.
* Secrets (``admin-password`` unless ``$MLFLOW_AUTH_ADMIN_PASSWORD`` is given, ``flask-secret``, the two pgpass
  files), the auth config and the logs are 0600; folders 0700 (the top folder 0711 under root, so the
  ``postgres`` account can reach its data folder without listing anything).

Users are added with :func:`add_user` (MLflow's own auth client). Clients point at the server with
``MLFLOW_TRACKING_URI`` and identify with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``. SIGTERM or
Ctrl-C stops MLflow, then PostgreSQL (the signals are blocked before the main thread waits for them, so the
``finally`` that stops both always runs). docs/SECURITY.md, "The team server", says who can reach what.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import requests
from mlflow.server import get_app_client

__all__ = ["STOP_SIGNALS", "TeamServer", "add_user", "main", "start_team_server"]

#: What stops a running server: Ctrl-C and what service managers and schedulers send.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
#: The role MLflow connects as (its two databases' owner; not a superuser).
MLFLOW_ROLE = "mlflow"
#: Longest Unix socket path Linux accepts (``sun_path`` holds 108 bytes with the terminating zero).
_SOCKET_PATH_MAX = 107


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise FileNotFoundError("PostgreSQL is not installed: run `make install` (it installs Debian's postgresql)")


@dataclass(frozen=True)
class _Layout:
    """Where the server's state lives under its folder, and which account PostgreSQL runs as."""

    folder: Path
    pg_port: int  # names the socket file (.s.PGSQL.<port>); nothing listens on this TCP port
    pg_user: str | None  # "postgres" when we are root (PostgreSQL refuses root), else ourselves

    @property
    def pg_data(self) -> Path:
        return self.folder / "postgres"

    @property
    def sockets(self) -> Path:
        return self.folder / "sockets"

    @property
    def superuser_pgpass(self) -> Path:
        return self.folder / "postgres.pgpass"

    @property
    def mlflow_pgpass(self) -> Path:
        return self.folder / "mlflow.pgpass"

    def db_uri(self, database: str) -> str:
        """SQLAlchemy URI of ``database`` over the socket, as the ``mlflow`` role; the password is in PGPASSFILE."""
        return f"postgresql+psycopg://{MLFLOW_ROLE}@/{database}?host={self.sockets}&port={self.pg_port}"


def _owner_only(path: Path, text: str | None = None) -> Path:
    """Create ``path`` with mode 0600 from the start (never briefly readable by others)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text or "")
    return path


def _pgpass_password(path: Path) -> str:
    """The password in a one-line pgpass file (``host:port:db:user:password``), or a new one when it is missing."""
    return path.read_text().strip().rsplit(":", 1)[1] if path.exists() else secrets.token_urlsafe(18)


def _secret(path: Path) -> str:
    """The secret kept in ``path``, generated (URL-safe, 144 bits) with mode 0600 the first time."""
    if not path.exists():
        _owner_only(path, secrets.token_urlsafe(18) + "\n")
    path.chmod(0o600)  # a copy restored with other modes is tightened
    return path.read_text().strip()


def _give_to_pg(layout: _Layout, path: Path) -> None:
    if layout.pg_user is not None:
        pw = pwd.getpwnam(layout.pg_user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _run_pg(layout: _Layout, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    """A PostgreSQL server program (initdb, pg_ctl), as the account PostgreSQL runs as."""
    if layout.pg_user is not None:
        cmd = ["runuser", "-u", layout.pg_user, "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def _prepare(folder: str | Path, pg_port: int | None) -> _Layout:
    """The folder and its owner-only sub-folders; PostgreSQL's data and socket folders go to its account."""
    layout = _Layout(
        Path(folder).expanduser().resolve(), pg_port or _free_port(), "postgres" if os.geteuid() == 0 else None
    )
    socket_path = layout.sockets / f".s.PGSQL.{layout.pg_port}"
    if len(os.fsencode(socket_path)) > _SOCKET_PATH_MAX:
        raise ValueError(f"{layout.folder} is too deep for PostgreSQL's socket ({socket_path}); use a shorter --dir")
    layout.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.folder.chmod(0o711 if layout.pg_user else 0o700)  # postgres may pass through, never list
    for sub in (layout.pg_data, layout.sockets, layout.folder / "artifacts"):
        sub.mkdir(exist_ok=True, mode=0o700)
        sub.chmod(0o700)  # an existing folder is tightened too
    for sub in (layout.pg_data, layout.sockets):
        _give_to_pg(layout, sub)
    if not (layout.folder / "postgres.log").exists():
        _give_to_pg(layout, _owner_only(layout.folder / "postgres.log"))
    return layout


def _initdb(layout: _Layout) -> None:
    """A new cluster whose every connection authenticates with scram-sha-256; its superuser's password is new."""
    password = secrets.token_urlsafe(18)
    # initdb reads the password from a file as the PostgreSQL account: a 0600 copy it owns, removed at once.
    pwfile = _owner_only(layout.sockets / ".initdb-password", password + "\n")
    _give_to_pg(layout, pwfile)
    try:
        cmd = ["initdb", "-D", str(layout.pg_data), "-A", "scram-sha-256", "-U", "postgres", f"--pwfile={pwfile}"]
        _run_pg(layout, [str(_pg_bin() / cmd[0]), *cmd[1:], "-E", "UTF8", "--no-sync", "--no-instructions"])
    finally:
        pwfile.unlink(missing_ok=True)
    _owner_only(layout.superuser_pgpass, f"*:*:*:postgres:{password}\n")


def _start_postgres(layout: _Layout, timeout: float) -> None:
    if not (layout.pg_data / "PG_VERSION").exists():
        _initdb(layout)
    elif not layout.superuser_pgpass.exists():
        raise RuntimeError(
            f"{layout.pg_data} has no superuser password in {layout.superuser_pgpass} (made by an older "
            "team-server, which let any local account in): move the folder aside and start a new one"
        )
    # No TCP (listen_addresses=''): the socket in a 0700 folder is the only way in, and it asks for a password.
    opts = f"-p {layout.pg_port} -k {shlex.quote(str(layout.sockets))} -c listen_addresses='' "
    opts += "-c unix_socket_permissions=0700"
    log = layout.folder / "postgres.log"
    cmd = [str(_pg_bin() / "pg_ctl"), "-D", str(layout.pg_data), "-o", opts, "-l", str(log), "-w"]
    started = _run_pg(layout, [*cmd, "-t", str(int(timeout)), "start"], check=False)
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start ({started.stderr.strip()[-300:]}); see {log}")


def _stop_postgres(layout: _Layout) -> None:
    """``pg_ctl stop -m fast`` (harmless when it is not running)."""
    _run_pg(layout, [str(_pg_bin() / "pg_ctl"), "-D", str(layout.pg_data), "-m", "fast", "-w", "stop"], check=False)


def _create_role_and_databases(layout: _Layout) -> None:
    """The ``mlflow`` role (password from ``mlflow.pgpass``) and its two databases, as the superuser over the
    socket. The SQL goes through stdin, never the command line, because it holds the role's password."""
    password = _pgpass_password(layout.mlflow_pgpass)
    sql = f"""
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{MLFLOW_ROLE}')
  THEN ALTER ROLE {MLFLOW_ROLE} LOGIN NOSUPERUSER PASSWORD '{password}';
  ELSE CREATE ROLE {MLFLOW_ROLE} LOGIN PASSWORD '{password}';
  END IF;
END $$;
"""
    for db in ("mlflow", "mlflow_auth"):
        sql += f"SELECT 'CREATE DATABASE {db} OWNER {MLFLOW_ROLE}' "
        sql += f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}') \\gexec\n"
    psql = [str(_pg_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(layout.sockets)]
    psql += ["-p", str(layout.pg_port), "-U", "postgres", "-d", "postgres"]
    env = {**os.environ, "PGPASSFILE": str(layout.superuser_pgpass)}
    done = subprocess.run(psql, input=sql, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"could not create the mlflow role and databases: {done.stderr.strip()[-300:]}")
    _owner_only(layout.mlflow_pgpass, f"*:*:*:{MLFLOW_ROLE}:{password}\n")


def _mlflow_command(layout: _Layout, port: int, workers: int) -> list[str]:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        layout.db_uri("mlflow"),  # no password: libpq reads it from PGPASSFILE
        "--artifacts-destination",
        str(layout.folder / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def _start_mlflow(layout: _Layout, port: int, admin_user: str, admin_password: str, workers: int) -> subprocess.Popen:
    """``mlflow server --app-name basic-auth`` in a session of its own (so one signal stops its workers too)."""
    ini = _owner_only(
        layout.folder / "basic_auth.ini",
        "[mlflow]\ndefault_permission = EDIT\n"
        f"database_uri = {layout.db_uri('mlflow_auth')}\nadmin_username = {admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "PG"))}
    env |= {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,  # the environment is readable by its owner only
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(layout.folder / "flask-secret"),
        "PGPASSFILE": str(layout.mlflow_pgpass),
    }
    # MLflow 3's background job runner (GenAI evaluation jobs; nothing medvision logs) starts 8 more processes.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    log_path = layout.folder / "mlflow-server.log"
    if not log_path.exists():
        _owner_only(log_path)
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server
    cmd = _mlflow_command(layout, port, workers)
    return subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, umask=0o077, close_fds=True
    )


@dataclass
class TeamServer:
    """A running server; :meth:`stop` ends MLflow (its whole session), then PostgreSQL."""

    url: str
    admin_user: str
    folder: Path
    pg_port: int
    sockets: Path
    _layout: _Layout = field(repr=False)
    mlflow: subprocess.Popen | None = None

    @property
    def pg_data(self) -> Path:
        return self._layout.pg_data

    def stop(self) -> None:
        if self.mlflow is not None and self.mlflow.poll() is None:
            os.killpg(self.mlflow.pid, signal.SIGTERM)
            try:
                self.mlflow.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.mlflow.pid, signal.SIGKILL)
                self.mlflow.wait()
        _stop_postgres(self._layout)


def _admin_password(folder: Path, given: str | None) -> str:
    password = given or os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
    return password if password else _secret(folder / "admin-password")


def start_team_server(
    folder: str | Path,
    *,
    port: int | None = None,
    pg_port: int | None = None,
    admin_password: str | None = None,
    admin_user: str = "admin",
    workers: int = 2,
    timeout: float = 120,
) -> TeamServer:
    """Start PostgreSQL and an authenticated MLflow server whose state lives under ``folder``.

    Whatever started is stopped again when starting fails or is interrupted (Ctrl-C, or SIGTERM turned into
    ``KeyboardInterrupt`` by :func:`main`), so a failed start leaves no process behind.

    Args:
        folder: PostgreSQL data, its socket, the shared artifact root, secrets and logs. Under root, the
            ``postgres`` user must be able to reach it (every parent folder executable by others, as /tmp is).
        port: MLflow's port on 127.0.0.1 (a free one by default).
        pg_port: the number in PostgreSQL's socket name (a free one by default; nothing listens on it).
        admin_password: the MLflow admin's password; default $MLFLOW_AUTH_ADMIN_PASSWORD, else a random one
            written to ``folder/admin-password`` (mode 0600).
        workers: MLflow server worker processes.

    Returns:
        The running :class:`TeamServer`.
    """
    layout = _prepare(folder, pg_port)
    port = port or _free_port()
    server = TeamServer(f"http://127.0.0.1:{port}", admin_user, layout.folder, layout.pg_port, layout.sockets, layout)
    try:
        _start_postgres(layout, timeout)
        _create_role_and_databases(layout)
        password = _admin_password(layout.folder, admin_password)
        server.mlflow = _start_mlflow(layout, port, admin_user, password, workers)
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: TeamServer, timeout: float) -> None:
    assert server.mlflow is not None
    log = server.folder / "mlflow-server.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.mlflow.poll() is not None:
            raise RuntimeError(f"mlflow server exited at start; see {log}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s; see {log}")


def add_user(url: str, admin_user: str, admin_password: str, username: str, password: str) -> None:
    """Create a user on the server through MLflow's auth API (as the admin)."""

    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_user, admin_password
    try:
        get_app_client("basic-auth", tracking_uri=url).create_user(username=username, password=password)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM while starting: unwind like Ctrl-C, so what started is stopped


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="team-server", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dir", default="team-server", help="folder for the database, artifacts and logs")
    parser.add_argument("--port", type=int, default=5000, help="MLflow port on 127.0.0.1")
    parser.add_argument(
        "--add-user",
        action="append",
        default=[],
        metavar="NAME",
        help="create this user; its password is read from $MEDVISION_NEW_USER_PASSWORD",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start a local team server and keep it running until Ctrl-C or SIGTERM; then stop MLflow and PostgreSQL."""
    args = _parse(argv)
    if args.add_user and not os.environ.get("MEDVISION_NEW_USER_PASSWORD"):
        raise SystemExit("--add-user needs $MEDVISION_NEW_USER_PASSWORD")
    signal.signal(signal.SIGTERM, _interrupt)
    server = None
    try:
        server = start_team_server(args.dir, port=args.port)
        admin_pw = _admin_password(server.folder, None)
        for name in args.add_user:
            add_user(server.url, server.admin_user, admin_pw, name, os.environ["MEDVISION_NEW_USER_PASSWORD"])
        where = "$MLFLOW_AUTH_ADMIN_PASSWORD" if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") else "admin-password"
        print(
            f"MLflow team server at {server.url} (admin user '{server.admin_user}', password in {where}; "
            f"data in {server.folder}); Ctrl-C or SIGTERM stops it.",
            flush=True,
        )
        # Blocked first, then waited for: a stop signal is taken by sigwait instead of killing the process (its
        # default action), so the finally below runs; one arriving before this line raised KeyboardInterrupt.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        signal.sigwait(STOP_SIGNALS)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
