"""Where the runs of a grid happen: one after another in the stage's process (`local`), or as Ray tasks (`ray`).

The executor sees a run only as an opaque, picklable spec and a `work(spec, shared, on_epoch)` function that any
worker can import from this package; it decides where `work` runs, never what it computes. Both executors compute
each run with `cpus_per_run` torch threads (on a CPU the thread count moves the last bits), so the same spec gives
the same result under either. The driver (the stage's process) gets every result back and does all the writing:
MLflow, the run cache and the DVC outputs, so workers need no shared filesystem and no access to the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

import wdlab
from wdlab.errors import StageError
from wdlab.settings import ExecutorSettings

log = logging.getLogger("wd-lab.executor")

Spec = TypeVar("Spec")
Result = TypeVar("Result")
EpochCallback = Callable[..., None]
Work = Callable[[Spec, Any, "EpochCallback | None"], Result]  # (spec, shared inputs, live callback or None) → result

RAY_DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 5.0  # a wrong address fails in seconds; ray.init alone retries for about a minute


@dataclass(frozen=True)
class Placement:
    """Where and how long a run ran: the Ray node (or `local`), its host, seconds on the worker, epochs live or not."""

    executor: str
    node: str
    host: str
    seconds: float
    live: (
        bool  # True: the run's epochs reached `on_epoch` as they ended (local); False: its whole record came at the end
    )

    def as_tags(self) -> dict[str, str]:
        return {
            "wd_lab.executor": self.executor,
            "wd_lab.node": self.node,
            "wd_lab.worker_host": self.host,
            "wd_lab.worker_seconds": f"{self.seconds:.1f}",
        }


OpenRun = Callable[
    [Any], contextlib.AbstractContextManager
]  # spec → context yielding its live epoch callback (or None)
Finish = Callable[[Any, Any, Placement], None]  # (spec, result, placement): called in the spec's open_run context


def check_address(settings: ExecutorSettings) -> str | None:
    """The Ray cluster to join (executor.address, else RAY_ADDRESS; None: start one on this machine), checked to
    answer within seconds: a head that is down must not stall the stage in ray.init's retries."""
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local", "auto"):
        return address
    source = "executor.address" if settings.address else "RAY_ADDRESS"
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon:
        host, port = port, str(RAY_DEFAULT_PORT)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        reason = "not host:port" if isinstance(err, ValueError) else (err.strerror or type(err).__name__).lower()
        raise StageError(
            f"no Ray cluster at {address} ({source}; {reason}): start its head with `ray start --head --port {port}`, "
            "fix the address, or unset RAY_ADDRESS and executor.address for a Ray instance on this machine"
        ) from None
    return address


def check_device(settings: ExecutorSettings, device: str) -> None:
    """Ray workers compute on the device kind the driver resolved (`device`), so GPUs must be reserved exactly when
    that is CUDA: a task that reserves none sees none (Ray sets CUDA_VISIBLE_DEVICES)."""
    if settings.kind != "ray":
        return
    if device == "cuda" and settings.gpus_per_run == 0:
        raise StageError(
            "the runs compute on cuda but executor.gpus_per_run is 0, so Ray gives them no GPU: "
            "set it to 1 (or 0.5 to share one)"
        )
    if device != "cuda" and settings.gpus_per_run > 0:
        raise StageError(
            f"executor.gpus_per_run = {settings.gpus_per_run:g} but this machine, the driver, "
            f"resolves `device` to {device}: run dvc where CUDA is available (the driver decides every run's device "
            "and formats) or set executor.gpus_per_run: 0"
        )


def run_all(
    specs: Sequence[Spec], work: Work, shared: Any, settings: ExecutorSettings, open_run: OpenRun, finish: Finish
) -> None:
    """Run `work(spec, shared, on_epoch)` for every spec; `finish(spec, result, placement)` each as it completes,
    inside `open_run(spec)`. Raises StageError once every run has ended if some could not finish."""
    if not specs:
        return
    if settings.kind == "local":
        _run_local(specs, work, shared, settings, open_run, finish)
    else:
        _run_ray(specs, work, shared, settings, open_run, finish)


def _run_local(
    specs: Sequence[Any], work: Work, shared: Any, settings: ExecutorSettings, open_run: OpenRun, finish: Finish
) -> None:
    for spec in specs:
        with open_run(spec) as on_epoch, torch_threads(settings.cpus_per_run):
            start = time.perf_counter()
            result = work(spec, shared, on_epoch)
            finish(
                spec, result, Placement("local", "local", socket.gethostname(), time.perf_counter() - start, live=True)
            )


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Compute with `threads` intra-op threads, as a Ray worker with `cpus_per_run` = `threads` does."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_worker(work: Work, spec: Any, shared: Any, threads: int) -> tuple[Any, Placement]:
    """What a Ray task runs on its worker: the run with `threads` torch threads, and where it ran."""
    import ray

    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = work(spec, shared, None)
    node = ray.get_runtime_context().get_node_id()
    return result, Placement("ray", node, socket.gethostname(), time.perf_counter() - start, live=False)


def _run_ray(
    specs: Sequence[Any], work: Work, shared: Any, settings: ExecutorSettings, open_run: OpenRun, finish: Finish
) -> None:
    """One Ray task per spec with the declared resources; results are taken as they finish (ray.wait). A task whose
    worker or node dies is started again elsewhere by Ray, at most `max_retries` times; an exception in `work`
    itself is not retried (the same spec would fail the same way)."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    with ray_session(settings):
        shared_ref = ray.put(shared)  # once into the object store; each node fetches it from there
        task = ray.remote(on_worker).options(
            num_cpus=settings.cpus_per_run,
            num_gpus=settings.gpus_per_run,
            max_retries=settings.max_retries,
            retry_exceptions=False,
        )
        pending = {task.remote(work, spec, shared_ref, settings.cpus_per_run): spec for spec in specs}
        log.info(
            "%d runs submitted to Ray (%d CPU, %g GPU each; %d retries): cluster has %s",
            len(pending),
            settings.cpus_per_run,
            settings.gpus_per_run,
            settings.max_retries,
            _cluster(ray),
        )
        failed: list[str] = []
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready)
            try:
                result, placement = ray.get(ready)
            except RayTaskError as err:  # `work` raised: report the worker's traceback, go on with the others
                cause = err.cause if isinstance(err.cause, Exception) else err
                log.error("%s failed on its worker:\n%s", spec, err)
                failed.append(f"{spec}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}")
                continue
            except RayError as err:  # its worker or node died, again and again
                log.error("%s lost after %d retries: %s", spec, settings.max_retries, type(err).__name__)
                failed.append(f"{spec}: its worker died, {settings.max_retries} retries used ({type(err).__name__})")
                continue
            log.info(
                "%s done on node %s (%s) in %.1f s; %d to go",
                spec,
                placement.node[:8],
                placement.host,
                placement.seconds,
                len(pending),
            )
            with open_run(spec):
                finish(spec, result, placement)
    if failed:
        raise StageError(
            f"{len(failed)} of {len(specs)} runs did not finish ({'; '.join(failed)}); the {len(specs) - len(failed)} "
            "that did are kept: rerun the stage to train only the rest"
        )


@contextlib.contextmanager
def ray_session(settings: ExecutorSettings) -> Iterator[None]:
    """Join the cluster (or start a Ray instance on this machine) with this package shipped to every worker, so
    nodes need neither the project's files nor a shared filesystem; leave it when done."""
    import ray

    address = check_address(settings)
    package = Path(wdlab.__file__).parent
    options: dict[str, Any] = {"include_dashboard": False} if address in (None, "local") else {}
    try:
        ray.init(
            address=address or "local",  # "local": a new instance, never someone else's cluster found on this machine
            runtime_env={"py_modules": [str(package)], "excludes": ["__pycache__"]},
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=False,
            **options,
        )
    except (ConnectionError, RuntimeError, ValueError) as err:  # e.g. a token the cluster does not accept
        raise StageError(
            f"cannot join the Ray cluster at {address or 'this machine'} ({_first_line(err)}): "
            "check RAY_ADDRESS or executor.address, "
            "and that this machine runs the cluster's Ray version and authentication (RAY_AUTH_MODE, ~/.ray/auth_token)"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _cluster(ray: Any) -> str:
    resources, nodes = ray.cluster_resources(), [node for node in ray.nodes() if node["Alive"]]
    return f"{len(nodes)} nodes, " + ", ".join(f"{resources.get(kind, 0):g} {kind}" for kind in ("CPU", "GPU"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[-1] if text else type(err).__name__)[:160]
