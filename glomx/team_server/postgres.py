"""A private PostgreSQL cluster for the MLflow tracking server: created on first start, listening
on 127.0.0.1 only, password-protected.

The password is drawn once, at ``initdb``, and kept in a libpq password file (mode 0600) beside
the cluster; clients find it through ``PGPASSFILE``, so it never appears in a URI, a command line
or a log. PostgreSQL refuses to run as root: under root the cluster belongs to, and every server
command runs as, an unprivileged user (Debian's ``postgres`` by default).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from glomx.errors import GlomxError

ROLE = "glomx"  # the cluster's superuser, the only role
PASSFILE = "pgpass"  # beside the cluster folder
INSTALL_HINT = "install PostgreSQL (Debian: `apt-get install -y postgresql`)"
DEBIAN_BIN = Path("/usr/lib/postgresql")  # Debian keeps the server binaries off the PATH


class PostgresError(GlomxError, RuntimeError):
    """PostgreSQL is missing or cannot start; the message names the folder or command."""


def pg_bin(name: str) -> Path:
    """A PostgreSQL program: on the PATH, else in Debian's newest ``/usr/lib/postgresql/*/bin``."""
    if found := shutil.which(name):
        return Path(found)
    versions = sorted(
        (p for p in DEBIAN_BIN.glob(f"*/bin/{name}") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
    )
    if not versions:
        raise PostgresError(
            f"PostgreSQL's `{name}` is neither on the PATH nor in "
            f"{DEBIAN_BIN}/*/bin: {INSTALL_HINT}"
        )
    return versions[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_user(requested: str | None) -> str | None:
    """The OS user PostgreSQL runs as: ``requested``, else none (this process's user), or
    ``postgres`` under root."""
    name = requested or ("postgres" if os.geteuid() == 0 else None)
    if name is None:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise PostgresError(
            f"user {name!r} does not exist; PostgreSQL refuses to run as root, so it needs an "
            f"unprivileged user: {INSTALL_HINT} (which creates `postgres`), `useradd --system "
            f"{name}`, or name another with --pg-user"
        ) from None
    return name


@dataclass
class Postgres:
    """A cluster in ``folder/postgres`` (password file ``folder/pgpass``) run as ``user``."""

    folder: Path
    user: str | None = None  # None: this process's user
    port: int = 0  # 0: a free port, chosen at start

    @property
    def data(self) -> Path:
        return self.folder / "postgres"

    @property
    def passfile(self) -> Path:
        return self.folder / PASSFILE

    @property
    def log(self) -> Path:
        return self.data / "server.log"

    def _command(self, program: str, args: Sequence[str]) -> list[str]:
        command = [str(pg_bin(program)), *args]
        return ["runuser", "-u", self.user, "--", *command] if self.user else command

    def _run(self, program: str, args: Sequence[str]) -> None:
        done = subprocess.run(self._command(program, args), capture_output=True, text=True)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PostgresError(f"`{program}` failed for {self.data}: {' '.join(detail)}")

    def _own(self, path: Path) -> None:
        if self.user:
            record = pwd.getpwnam(self.user)
            os.chown(path, record.pw_uid, record.pw_gid)

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file() and self.passfile.is_file()

    def init(self) -> None:
        """``initdb`` with a fresh random password for :data:`ROLE`, unless already done."""
        if self.initialised():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.data.exists() and any(self.data.iterdir()):
            raise PostgresError(
                f"{self.data} holds files but no cluster; remove it or choose another server folder"
            )
        self.data.mkdir(mode=0o700, exist_ok=True)
        self._own(self.data)
        password = secrets.token_urlsafe(24)
        with tempfile.TemporaryDirectory(prefix="glomx-pg-") as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(password + "\n")
            for path in (Path(tmp), pwfile):
                self._own(path)
            self._run(
                "initdb",
                [
                    "-D",
                    str(self.data),
                    "-U",
                    ROLE,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
            )
        descriptor = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(f"*:*:*:{ROLE}:{password}\n")

    def start(self) -> None:
        """Start the cluster on 127.0.0.1 (no Unix socket) and wait until it accepts."""
        if self.running():
            raise PostgresError(
                f"a PostgreSQL server already runs on {self.data}; stop it "
                f"(`pg_ctl stop -D {self.data}`) or use another server folder"
            )
        self.port = self.port or free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._run(
            "pg_ctl",
            ["start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options],
        )

    def running(self) -> bool:
        command = self._command("pg_ctl", ["status", "-D", str(self.data)])
        return subprocess.run(command, capture_output=True).returncode == 0

    def stop(self) -> None:
        """Fast shutdown (open sessions are rolled back), waiting until it is down."""
        if self.running():
            self._run("pg_ctl", ["stop", "-w", "-m", "fast", "-D", str(self.data)])

    def ensure_database(self, name: str) -> None:
        """Create database ``name`` unless it exists."""
        import psycopg  # the pinned driver MLflow's SQLAlchemy store uses too
        from psycopg.conninfo import make_conninfo

        info = make_conninfo("", **self.connection("postgres"))
        with psycopg.connect(info, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')

    def connection(self, database: str) -> dict[str, str | int]:
        """libpq connection parameters; the password comes from :attr:`passfile`."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": ROLE,
            "dbname": database,
            "passfile": str(self.passfile),
        }

    def sqlalchemy_uri(self, database: str) -> str:
        """MLflow's backend store URI (psycopg 3); it carries no password."""
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{database}"
