"""A real WebDAV server over HTTPS (WsgiDAV on cheroot, `wsgidav -c <config>`) on 127.0.0.1 and a free port, with a
certificate from a team CA of its own (trustme) and one password login per colleague; everything it reads and
writes in one folder: the shared files, its certificate and key, its config and log.

    team_ca = trustme.CA()
    server = start(folder, team_ca, users=("alice", "bob"))   # a webdav_server.Server; always server.stop()
    server.url("/wd-lab")        # webdavs://127.0.0.1:PORT/wd-lab, for `dvc remote add`
    server.ca_file               # the team CA's certificate: what a client pins (`ssl_verify`)
    server.passwords["alice"]    # her login
    server.root / "wd-lab"       # the remote's folder, as the server stores it

An impostor is the same server started with another CA (`trustme.CA()`): a client that pins the team's refuses it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

from wdlab.workspace import free_port, kill_group, tool_env

HOST = "127.0.0.1"


def _config(folder: Path, port: int, passwords: dict[str, str]) -> dict:
    """WsgiDAV's config: `folder`/files shared read-write as /, HTTPS only, HTTP Basic logins (sent inside TLS)."""
    return {
        "host": HOST,
        "port": port,
        "server": "cheroot",
        "ssl_certificate": str(folder / "server.pem"),
        "ssl_private_key": str(folder / "server.key"),
        "provider_mapping": {"/": str(folder / "files")},
        "http_authenticator": {
            "domain_controller": None,  # WsgiDAV's SimpleDomainController: the logins below
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
        },
        "simple_dc": {"user_mapping": {"*": {user: {"password": word} for user, word in passwords.items()}}},
        "verbose": 3,  # one log line per request: what the wrong-identity test reads to see that none arrived
        "logging": {"enable": True},
        "dir_browser": {"enable": False},
    }


@dataclass
class Server:
    folder: Path
    port: int
    ca_file: Path
    passwords: dict[str, str]
    proc: subprocess.Popen
    log: Path

    @property
    def root(self) -> Path:
        """The folder the server shares as /."""
        return self.folder / "files"

    def url(self, path: str) -> str:
        return f"webdavs://{HOST}:{self.port}{path}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        kill_group(self.proc, grace=5)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def start(
    folder: Path, ca: trustme.CA, users: Sequence[str] = ("alice",), timeout: float = 60, attempts: int = 3
) -> Server:
    """WsgiDAV on HOST and a free port with a certificate for HOST issued by `ca`, a random password for each of
    `users`, all files in `folder`; returns once it accepts connections. Retries on another port if the chosen one
    was taken meanwhile. Call `stop()`."""
    (folder / "files").mkdir(parents=True, exist_ok=True)
    certificate = ca.issue_cert(HOST)
    certificate.private_key_pem.write_to_path(str(folder / "server.key"))
    certificate.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    passwords = {user: secrets.token_urlsafe(16) for user in users}

    for attempt in range(1, attempts + 1):
        port = free_port()
        config = folder / "wsgidav.json"
        config.write_text(json.dumps(_config(folder, port, passwords)))
        log = folder / "wsgidav.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsgidav.server.server_cli", "-c", str(config)], cwd=folder, env=tool_env(),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        server = Server(folder, port, ca_file, passwords, proc, log)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not _listening(port):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"WsgiDAV on {HOST}:{port} not listening after {timeout:.0f} s:\n{server.log_tail()}"
                    )
                time.sleep(0.1)
            if proc.poll() is None:
                return server
            tail = server.log_tail()
            if "address already in use" not in tail.lower() or attempt == attempts:
                raise AssertionError(f"WsgiDAV exited with {proc.returncode}:\n{tail}")
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running(folder: Path, ca: trustme.CA, users: Sequence[str] = ("alice",)) -> Iterator[Server]:
    """`start(folder, ca, users)` as a context: the server is stopped when the block exits, also when it raises."""
    server = start(folder, ca, users)
    try:
        yield server
    finally:
        server.stop()
