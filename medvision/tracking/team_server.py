"""A team tracking server to try out: PostgreSQL + ``mlflow server`` with MLflow's basic authentication.

One command (``scripts/team-server`` or ``python -m medvision.tracking.team_server``) starts, in a folder:

* PostgreSQL from the Debian package (``initdb`` + ``pg_ctl``), listening on 127.0.0.1 only, with a
  socket folder of its own. PostgreSQL refuses to run as root, so under root it runs as the ``postgres``
  user the package creates. Two databases: ``mlflow`` (runs, registry) and ``mlflow_auth`` (users).
* ``mlflow server --app-name basic-auth`` on it, bound to 127.0.0.1, serving a shared artifact root
  (``--artifacts-destination``), so clients need no access to the server's disk.

Users are added with :func:`add_user` (MLflow's own auth client). Clients point at the server with
``MLFLOW_TRACKING_URI`` and identify with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``;
nothing secret is written into a pipeline file. For a real deployment put TLS (a reverse proxy) in front
and give PostgreSQL password authentication; this one uses ``trust`` on the loopback interface.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests
from mlflow.server import get_app_client

__all__ = ["TeamServer", "add_user", "main", "start_team_server"]


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
    raise FileNotFoundError("PostgreSQL is not installed: run `make install` (or apt-get install postgresql)")


@dataclass
class TeamServer:
    """A running server; :meth:`stop` ends MLflow, then PostgreSQL."""

    url: str
    admin_user: str
    folder: Path
    pg_port: int
    pg_data: Path
    mlflow: subprocess.Popen
    _pg_user: str | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.mlflow.poll() is None:
            os.killpg(self.mlflow.pid, signal.SIGTERM)
            try:
                self.mlflow.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.mlflow.pid, signal.SIGKILL)
                self.mlflow.wait()
        _run_pg(
            [str(_pg_bin() / "pg_ctl"), "-D", str(self.pg_data), "-m", "fast", "-w", "stop"], self._pg_user, check=False
        )


def _run_pg(cmd: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess:
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


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

    Args:
        folder: PostgreSQL data, sockets, the shared artifact root and logs. Under root, the ``postgres``
            user must be able to reach it (every parent folder executable by others, as /tmp is).
        port, pg_port: loopback ports (free ones by default).
        admin_password: the MLflow admin's password; default $MLFLOW_AUTH_ADMIN_PASSWORD, else a random one
            written to ``folder/admin-password`` (mode 0600).
        workers: MLflow server worker processes.

    Returns:
        The running :class:`TeamServer`.
    """

    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    pg_user = "postgres" if os.geteuid() == 0 else None
    pg_data, sockets = folder / "postgres", folder / "sockets"
    pg_port = pg_port or _free_port()
    port = port or _free_port()
    bin_dir = _pg_bin()
    fresh = not (pg_data / "PG_VERSION").exists()
    for d in (pg_data, sockets):
        d.mkdir(exist_ok=True)
        if pg_user is not None:
            pw = pwd.getpwnam(pg_user)
            os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(pg_data, 0o700)
    pg_log = folder / "postgres.log"
    pg_log.touch()
    if pg_user is not None:
        os.chown(pg_log, pwd.getpwnam(pg_user).pw_uid, -1)
    if fresh:
        _run_pg(
            [str(bin_dir / "initdb"), "-D", str(pg_data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            pg_user,
        )
    opts = f"-p {pg_port} -k {sockets} -c listen_addresses=127.0.0.1"
    started = _run_pg(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(pg_data),
            "-o",
            opts,
            "-l",
            str(pg_log),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        ],
        pg_user,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start ({started.stderr.strip()[-300:]}); see {pg_log}")
    with psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres", autocommit=True) as conn:
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for db in ("mlflow", "mlflow_auth"):
            if db not in have:
                conn.execute(f"CREATE DATABASE {db}")

    db_uri = f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}"
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    password = admin_password or os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
    if password is None:
        pw_file = folder / "admin-password"
        if not pw_file.exists():
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(18) + "\n")
        password = pw_file.read_text().strip()
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = EDIT\n"
        f"database_uri = {db_uri}/mlflow_auth\nadmin_username = {admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    secret_file = folder / "flask-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_file.read_text().strip(),
    }
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"{db_uri}/mlflow",
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    log = open(folder / "mlflow-server.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = TeamServer(f"http://127.0.0.1:{port}", admin_user, folder, pg_port, pg_data, proc, pg_user)
    _wait_ready(server, timeout)
    return server


def _wait_ready(server: TeamServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.mlflow.poll() is not None:
            server.stop()
            raise RuntimeError(f"mlflow server exited at start; see {server.folder / 'mlflow-server.log'}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(
        f"mlflow server did not answer within {timeout:.0f} s; see {server.folder / 'mlflow-server.log'}"
    )


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


def main(argv: list[str] | None = None) -> None:
    """Start a local team server and keep it running until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="team-server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="team-server", help="folder for the database, artifacts and logs")
    parser.add_argument("--port", type=int, default=5000, help="MLflow port on 127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port on 127.0.0.1 (default: free)")
    parser.add_argument(
        "--add-user",
        action="append",
        default=[],
        metavar="NAME",
        help="create this user; its password is read from $MEDVISION_NEW_USER_PASSWORD",
    )
    args = parser.parse_args(argv)
    server = start_team_server(args.dir, port=args.port, pg_port=args.pg_port)
    admin_pw = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or (server.folder / "admin-password").read_text().strip()
    for name in args.add_user:
        new_pw = os.environ.get("MEDVISION_NEW_USER_PASSWORD")
        if not new_pw:
            server.stop()
            raise SystemExit("--add-user needs $MEDVISION_NEW_USER_PASSWORD")
        add_user(server.url, server.admin_user, admin_pw, name, new_pw)
    where = (
        "$MLFLOW_AUTH_ADMIN_PASSWORD"
        if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
        else f"{server.folder / 'admin-password'}"
    )
    print(
        f"MLflow team server at {server.url} (admin user '{server.admin_user}', password in {where}); Ctrl-C stops it.",
        flush=True,
    )
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
