"""A real PostgreSQL server from Debian's package on a free 127.0.0.1 port, its data in a temp dir of its own: the
database of the team tracking server (docs/mlflow.md).

    with postgres_server() as uri:   # postgresql+psycopg2://mlflow@127.0.0.1:PORT/mlflow, trust auth, then removed
        ...

PostgreSQL refuses to run as root: as root, every PostgreSQL program runs as the `postgres` system user the Debian
package creates (`runuser -u postgres --`), on a data dir chowned to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from wdlab.workspace import free_port, kill_group

INSTALL = "run .ci/install-debian postgresql"
DATABASE = USER = "mlflow"
SPEED = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")  # a throwaway database


def bindir() -> Path | None:
    """Where Debian's `initdb` and `postgres` are: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    found = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            found.append(Path(out.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    found += sorted(versions, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0, reverse=True)
    return next((path for path in found if (path / "initdb").is_file() and (path / "postgres").is_file()), None)


def missing() -> str | None:
    """Why PostgreSQL cannot run here, in one line naming the fix; None when it can."""
    if bindir() is None:
        return f"PostgreSQL is not installed: {INSTALL} to enable the team tracking server tests"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser (util-linux): PostgreSQL refuses to run as root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return f"running as root and there is no `postgres` user to run PostgreSQL as: {INSTALL} creates it"
    return None


def _as_owner() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _stop(server: subprocess.Popen) -> None:
    """A fast shutdown (SIGINT: clients cut off, no checkpoint wait), then kill_group if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(10)
    kill_group(server)


@contextlib.contextmanager
def postgres_server(timeout: float = 30, attempts: int = 3) -> Iterator[str]:
    """`initdb` a temp data dir, run `postgres` on it on a free 127.0.0.1 port (its socket in the same dir), create
    the `mlflow` database, yield its SQLAlchemy URI; always stop the server and remove the dir."""
    import psycopg2

    programs = bindir()
    assert programs is not None and missing() is None, missing()
    home = Path(tempfile.mkdtemp(prefix="wdpg-", dir="/tmp"))  # short: the socket path must stay under 107 bytes
    try:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(home, owner.pw_uid, owner.pw_gid)
        data = home / "data"
        initdb = [*_as_owner(), str(programs / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8"]
        subprocess.run([*initdb, "--no-sync"], check=True, capture_output=True, timeout=120)
        for attempt in range(1, attempts + 1):
            port, log = free_port(), home / f"postgres-{attempt}.log"
            with log.open("w") as out:
                server = subprocess.Popen(
                    [*_as_owner(), str(programs / "postgres"), "-D", str(data), "-k", str(home),
                     "-h", "127.0.0.1", "-p", str(port), *SPEED],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            try:
                deadline = time.monotonic() + timeout
                while server.poll() is None and time.monotonic() < deadline:
                    try:
                        connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres")
                    except psycopg2.OperationalError:
                        time.sleep(0.2)
                        continue
                    connection.autocommit = True
                    with contextlib.closing(connection), connection.cursor() as cursor:
                        cursor.execute(f"CREATE DATABASE {DATABASE}")
                    yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{DATABASE}"
                    return
                tail = log.read_text(errors="replace")[-3000:]
                if server.poll() is None:
                    raise AssertionError(f"PostgreSQL not up on port {port} after {timeout:.0f} s; log:\n{tail}")
                if "address already in use" not in tail.lower() or attempt == attempts:
                    raise AssertionError(f"PostgreSQL exited with {server.returncode}; log:\n{tail}")
            finally:
                _stop(server)
    finally:
        shutil.rmtree(home, ignore_errors=True)
