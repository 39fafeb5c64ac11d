"""A real multi-node Ray cluster on 127.0.0.1: a head and worker nodes started with the `ray` CLI, torn down after.
Used by benchmarks/ray_overhead.py and tests/test_ray.py.

    with ray_cluster(workers=1) as cluster:   # RAY_ADDRESS=cluster.address; cluster.kill_worker(0) kills a node
        ...

Each node is one `ray start --block` in a process group of its own; teardown kills exactly that group and the
workers its raylet started (`ray stop` would kill every Ray process on the machine, other users' too). Every port
is a free one, the session files live in a short temp dir (Ray's socket paths must stay under ~100 characters),
and the GCS gives up on a silent node after ~3 s instead of ~30 s, so a killed node's runs are retried quickly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wdlab.workspace import free_port

RAY = str(Path(sys.executable).parent / "ray")
OBJECT_STORE_BYTES = 100 << 20  # Ray's floor is 75 MiB; the tiny grid's splits are a few MB
# Ray turns token authentication on by itself when ~/.ray/auth_token exists (another user's cluster may have made one):
# the cluster and every driver that joins it say explicitly that it is off.
NO_AUTH = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
FAST_FAILURE_DETECTION = {  # the GCS marks a node dead after 3 missed 1 s health checks
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    head: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    node_ids: dict[str, str] = field(default_factory=dict)  # "head", "worker0", ... → Ray node id

    @property
    def env(self) -> dict[str, str]:
        """What a driver process needs in its environment to join this cluster."""
        return {"RAY_ADDRESS": self.address} | NO_AUTH

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker node `index` whole (its raylet and every task on it), as a machine that dies would go."""
        _kill_node(self.workers[index])

    def worker_tasks(self, index: int) -> list[str]:
        """Titles of the task processes running on worker node `index` (a running task shows as `ray::<function>`)."""
        return [args for _, args in _node_processes(self.workers[index]) if args.startswith("ray::")]


def _node_processes(process: subprocess.Popen) -> list[tuple[int, str]]:
    """(pid, command line) of every process of a node: its process group and their descendants (Ray starts its
    workers in sessions of their own)."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in table.splitlines()]
    rows = [(int(pid), int(ppid), int(pgid), args[0] if args else "") for pid, ppid, pgid, *args in rows]
    members = {pid for pid, _, pgid, _ in rows if pgid == process.pid}
    grew = True
    while grew:
        children = {pid for pid, ppid, _, _ in rows if ppid in members} - members
        members |= children
        grew = bool(children)
    return [(pid, args) for pid, _, _, args in rows if pid in members]


def _node(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    environment = _environment() | env
    return subprocess.Popen(
        [
            RAY,
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "1",
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--disable-usage-stats",
            *args,
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=environment,
    )


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | NO_AUTH


def _kill_node(process: subprocess.Popen) -> None:
    """SIGKILL a node's `ray start` process group and every worker it started, then reap the `ray start` process."""
    for pid, _ in _node_processes(process):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray head exited {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.2)
    raise RuntimeError(f"ray head did not open port {port} in {timeout:.0f} s")


def alive_nodes(address: str, expected: int, timeout: float = 90) -> dict[str, str]:
    """{"head" or "worker": node id} once `expected` nodes are alive, asked from a separate Ray driver process."""
    probe = (
        "import json, sys, time, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        f"deadline = time.monotonic() + {timeout}\n"
        "while time.monotonic() < deadline:\n"
        "    nodes = [n for n in ray.nodes() if n['Alive']]\n"
        f"    if len(nodes) >= {expected}: break\n"
        "    time.sleep(0.3)\n"
        "print(json.dumps([(n['NodeID'], 'node:__internal_head__' in n['Resources']) for n in nodes]))\n"
    )
    env = _environment()
    for _ in range(3):  # the GCS port opens a moment before the head's raylet has registered
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout + 60, env=env
        )
        if out.returncode == 0:
            break
        time.sleep(2)
    else:
        raise RuntimeError(f"cannot join the Ray cluster at {address}:\n{out.stderr[-3000:]}")
    nodes = json.loads(out.stdout.strip().splitlines()[-1])
    if len(nodes) < expected:
        raise RuntimeError(f"only {len(nodes)} of {expected} Ray nodes came up")
    return {"head": next(n for n, head in nodes if head), "workers": [n for n, head in nodes if not head]}


@contextlib.contextmanager
def ray_cluster(workers: int = 1) -> Iterator[Cluster]:
    """A head node (1 CPU) and `workers` worker nodes (1 CPU each) on 127.0.0.1, torn down whatever happens."""
    temp_dir = Path(tempfile.mkdtemp(prefix="wdray-", dir="/tmp"))
    port = free_port()
    head = _node(
        [
            "--head",
            "--port",
            str(port),
            "--include-dashboard=false",
            "--dashboard-port",
            str(free_port()),
            "--temp-dir",
            str(temp_dir),
        ],
        temp_dir / "head.log",
        **FAST_FAILURE_DETECTION,
    )
    cluster = Cluster(f"127.0.0.1:{port}", temp_dir, head)
    try:
        _wait_for_port(port, head, temp_dir / "head.log")
        for i in range(workers):
            cluster.workers.append(_node(["--address", cluster.address], temp_dir / f"worker{i}.log"))
        nodes = alive_nodes(cluster.address, 1 + workers)
        cluster.node_ids = {"head": nodes["head"]} | {f"worker{i}": node for i, node in enumerate(nodes["workers"])}
        yield cluster
    finally:
        for process in [*cluster.workers, head]:
            _kill_node(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
