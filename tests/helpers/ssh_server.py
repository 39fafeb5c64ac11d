"""A real OpenSSH server (`/usr/sbin/sshd -D -e -f <config>`) on 127.0.0.1 and a free port, everything it reads and
writes in one folder: its own host key, the authorized_keys of the keys a test generates, its PidFile and log.

    server = start(folder, keys=2)      # an ssh.Server; always server.stop() (the fixture in test_sharing does)
    server.url("/srv/dvc-store")        # ssh://127.0.0.1:PORT/srv/dvc-store, for `dvc remote add`
    server.keys[0], server.user         # the private key files authorized for `user` (who runs the test)
    server.known_hosts_line()           # "[127.0.0.1]:PORT ssh-ed25519 AAAA..." for a client's ~/.ssh/known_hosts
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from wdlab.workspace import free_port, kill_group

SSHD = Path("/usr/sbin/sshd")
HOST = "127.0.0.1"
INSTALL = ".ci/install-debian openssh-server"
# As root, sshd checks (and chroots its pre-authentication child into) this compiled-in directory, which Debian's
# service unit creates at boot (RuntimeDirectory=sshd); a server started by hand needs it too.
PRIVSEP_DIR = Path("/run/sshd")


def missing() -> str | None:
    """Why an OpenSSH server cannot be started here, or None when it can: the reason a test skips with."""
    if not SSHD.is_file():
        return f"{SSHD} not installed (Debian's openssh-server): run `{INSTALL}`"
    if shutil.which("ssh-keygen") is None:
        return f"ssh-keygen not installed (Debian's openssh-client): run `{INSTALL}`"
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as err:
            return f"sshd running as root needs {PRIVSEP_DIR}, which cannot be created: {err}"
    return None


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key pair without passphrase at `path` and `path`.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return path


def _config(folder: Path, port: int, user: str) -> str:
    """sshd_config for one user logging in with a key from `folder`/authorized_keys, on HOST:port only."""
    return "\n".join([
        f"ListenAddress {HOST}",
        f"Port {port}",
        f"HostKey {folder / 'host_ed25519_key'}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        f"AllowUsers {user}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",  # root may log in with a key only (the tests run as root in CI)
        "UsePAM no",  # no system login session: the server runs as whoever starts it, root or not
        "StrictModes no",  # the key files live under /tmp, whose mode sshd's ownership check refuses
        "Subsystem sftp internal-sftp",  # DVC's SSH remote talks SFTP (plus a shell for a few commands)
        "UseDNS no",
        "LogLevel VERBOSE",
        "",
    ])  # fmt: skip


@dataclass
class Server:
    folder: Path
    port: int
    user: str
    keys: list[Path]
    proc: subprocess.Popen
    log: Path
    started_s: float = field(default=0.0)

    def url(self, path: Path | str) -> str:
        return f"ssh://{HOST}:{self.port}{path}"

    def known_hosts_line(self, public_key: Path | None = None) -> str:
        """The server's host key (or `public_key`, to test a mismatch) as a known_hosts line for HOST:port (OpenSSH's
        `[host]:port` form)."""
        kind, key, *_ = (public_key or self.folder / "host_ed25519_key.pub").read_text().split()
        return f"[{HOST}]:{self.port} {kind} {key}\n"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        kill_group(self.proc, grace=5)


def start(folder: Path, keys: int = 1, timeout: float = 30, attempts: int = 3) -> Server:
    """sshd on HOST and a free port, `keys` client keys authorized for the current user, all files in `folder`;
    returns once it listens. Retries on another port if the chosen one was taken meanwhile. Call `stop()`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    user = getpass.getuser()
    keygen(folder / "host_ed25519_key", "wd-lab test sshd host key")
    clients = [keygen(folder / f"client{i}_ed25519", f"wd-lab test client {i}") for i in range(keys)]
    (folder / "authorized_keys").write_text("".join(Path(f"{key}.pub").read_text() for key in clients))
    (folder / "authorized_keys").chmod(0o600)

    for attempt in range(1, attempts + 1):
        port = free_port()
        config = folder / "sshd_config"
        config.write_text(_config(folder, port, user))
        log = folder / "sshd.log"
        begun = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        server = Server(folder, port, user, clients, proc, log)
        try:
            deadline = begun + timeout
            while proc.poll() is None and "Server listening" not in server.log_tail(100_000):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"sshd on {HOST}:{port} not listening after {timeout:.0f} s:\n{server.log_tail()}"
                    )
                time.sleep(0.05)
            if proc.poll() is None:
                server.started_s = time.monotonic() - begun
                return server
            tail = server.log_tail()
            if "address already in use" not in tail.lower() or attempt == attempts:
                raise AssertionError(f"sshd exited with {proc.returncode}:\n{tail}")
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running(folder: Path, keys: int = 1):
    """`start(folder, keys)` as a context: the server is stopped when the block exits, also when it raises."""
    server = start(folder, keys)
    try:
        yield server
    finally:
        server.stop()
