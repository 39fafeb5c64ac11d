"""Where the runs of a grid happen: one after another in the stage's process (`local`), or as Ray tasks (`ray`).

The executor sees a run only as an opaque, picklable spec and a `work(spec, shared, on_epoch)` function that any
worker can import from this package; it decides where `work` runs, never what it computes. Both executors compute
each run with `cpus_per_run` torch threads (on a CPU the thread count moves the last bits), so the same spec gives
the same result under either. The driver (the stage's process) gets every result back and writes the run cache and
the DVC outputs, so workers need no shared filesystem. A run's epochs reach its `Live` as they end: under `ray` a
worker logs them itself where the run's `Live` says how (to a tracking server), else sends them back to the driver
through a Ray queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
EpochCallback = Callable[..., None]  # on_epoch(epoch, *data), epoch 0 (the initial model) first
Work = Callable[[Spec, Any, "EpochCallback | None"], Result]  # (spec, shared inputs, live callback or None) → result

RAY_DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 5.0  # a wrong address fails in seconds; ray.init alone retries for about a minute
RELAY_INTERVAL_S = 0.5  # how often the driver passes on the epochs its Ray workers sent back


@dataclass(frozen=True)
class Placement:
    """Where and how long a run ran: the Ray node (or `local`), its host, seconds on the worker, and how many of its
    first epochs reached their destination while it trained (the rest came only with its result)."""

    executor: str
    node: str
    host: str
    seconds: float
    live_epochs: int

    def as_tags(self) -> dict[str, str]:
        return {
            "wd_lab.executor": self.executor,
            "wd_lab.node": self.node,
            "wd_lab.worker_host": self.host,
            "wd_lab.worker_seconds": f"{self.seconds:.1f}",
        }


@dataclass(frozen=True)
class Live:
    """Where a run's epochs go as they end. `here`: a callback in the driver. `remote` (optional): a picklable
    context manager that a Ray worker enters to get the callback it logs the run with itself (to a tracking server it
    reaches), and whose `delivered` then says how many of the run's first epochs it logged. Under `ray` a run with a
    `remote` uses it; one without sends its epochs back to the driver, which passes them to `here`."""

    here: EpochCallback | None = None
    remote: Any = None


OpenRun = Callable[[Any], contextlib.AbstractContextManager]  # spec → context yielding its Live (None: no live epochs)
Finish = Callable[[Any, Any, Placement], None]  # (spec, result, placement): called in the spec's open_run context


class Relay:
    """A run's epochs passed to a driver-side callback once each and in order, and counted: a retried Ray task sends
    again the epochs its earlier attempt sent (the same bits), and after an epoch lost on the way the rest wait for
    the run's result."""

    def __init__(self, here: EpochCallback | None):
        self.here, self.delivered = here, 0

    def __call__(self, epoch: int, *data: Any) -> None:
        if epoch != self.delivered:
            return
        if self.here is not None:
            self.here(epoch, *data)
        self.delivered += 1


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
        with open_run(spec) as live, torch_threads(settings.cpus_per_run):
            relay = Relay((live or Live()).here)
            start = time.perf_counter()
            result = work(spec, shared, relay)
            seconds = time.perf_counter() - start
            finish(spec, result, Placement("local", "local", socket.gethostname(), seconds, relay.delivered))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Compute with `threads` intra-op threads, as a Ray worker with `cpus_per_run` = `threads` does."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_worker(work: Work, spec: Any, shared: Any, threads: int, sink: Any) -> tuple[Any, Placement]:
    """What a Ray task runs on its worker: the run with `threads` torch threads, its epochs sent to `sink` (the run's
    `Live.remote`, or a `ToDriver`) as they end, and where it ran."""
    import ray

    torch.set_num_threads(threads)
    with sink as on_epoch:  # (a tracking server's: imports MLflow, starts its system-metrics monitor)
        start = time.perf_counter()
        result = work(spec, shared, on_epoch)
        seconds = time.perf_counter() - start
    node = ray.get_runtime_context().get_node_id()
    return result, Placement("ray", node, socket.gethostname(), seconds, sink.delivered or 0)


class ToDriver:
    """A worker's end of the Ray queue to the driver: each epoch as (run index, epoch, data); the driver counts what
    arrives. After a put that fails it sends no more (the run's result brings every epoch). Picklable: the queue is a
    Ray actor handle."""

    def __init__(self, queue: Any, index: int):
        self.queue, self.index, self.failed = queue, index, False
        self.delivered = None  # known to the driver only

    def __enter__(self) -> ToDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, epoch: int, *data: Any) -> None:
        if self.failed or self.queue is None:  # None: nobody in the driver wants the epochs
            return
        try:
            self.queue.put((self.index, epoch, data))
        except Exception as err:  # the driver's queue is gone; the run goes on
            log.warning("epoch %d not sent to the driver (%s)", epoch, type(err).__name__)
            self.failed = True


class _OpenRun:
    """One run's `open_run` context: entered when the run is submitted, left when its result is in (or lost)."""

    def __init__(self, open_run: OpenRun, spec: Any):
        self.context = open_run(spec)
        self.live = self.context.__enter__() or Live()
        self.relay = Relay(self.live.here)

    def close(self, error: BaseException | None = None) -> None:
        if error is None:
            self.context.__exit__(None, None, None)
        else:
            self.context.__exit__(type(error), error, error.__traceback__)


def _run_ray(
    specs: Sequence[Any], work: Work, shared: Any, settings: ExecutorSettings, open_run: OpenRun, finish: Finish
) -> None:
    """One Ray task per spec with the declared resources; results are taken as they finish (ray.wait). A task whose
    worker or node dies is started again elsewhere by Ray, at most `max_retries` times; an exception in `work`
    itself is not retried (the same spec would fail the same way). Every run is opened (`open_run`) as it is
    submitted, so that its epochs reach it while it trains, and closed once its result is in, or as failed once it
    is lost."""
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
        runs: dict[int, _OpenRun] = {}
        failed: list[str] = []
        try:
            for index, spec in enumerate(specs):
                runs[index] = _OpenRun(open_run, spec)
            to_driver = [run for run in runs.values() if run.live.remote is None and run.live.here is not None]
            queue = _epoch_queue(ray) if to_driver else None
            pending = {
                task.remote(work, spec, shared_ref, settings.cpus_per_run, runs[i].live.remote or ToDriver(queue, i)): i
                for i, spec in enumerate(specs)
            }
            log.info(
                "%d runs submitted to Ray (%d CPU, %g GPU each; %d retries), epochs live %s: cluster has %s",
                len(pending),
                settings.cpus_per_run,
                settings.gpus_per_run,
                settings.max_retries,
                "through the driver" if queue else "from the workers",
                _cluster(ray),
            )
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=RELAY_INTERVAL_S if queue else None)
                queue = _relay(queue, runs)
                if not ready:
                    continue
                index = pending.pop(ready[0])
                spec, run = specs[index], runs[index]
                try:
                    result, placement = ray.get(ready[0])
                except RayTaskError as err:  # `work` raised: report the worker's traceback, go on with the others
                    cause = err.cause if isinstance(err.cause, Exception) else err
                    log.error("%s failed on its worker:\n%s", spec, err)
                    reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                except RayError as err:  # its worker or node died, again and again
                    log.error("%s lost after %d retries: %s", spec, settings.max_retries, type(err).__name__)
                    reason = f"its worker died, {settings.max_retries} retries used ({type(err).__name__})"
                else:
                    log.info(
                        "%s done on node %s (%s) in %.1f s; %d to go",
                        spec,
                        placement.node[:8],
                        placement.host,
                        placement.seconds,
                        len(pending),
                    )
                    if run.live.remote is None:
                        placement = dataclasses.replace(placement, live_epochs=run.relay.delivered)
                    finish(spec, result, placement)
                    runs.pop(index).close()
                    continue
                failed.append(f"{spec}: {reason}")
                runs.pop(index).close(StageError(failed[-1]))  # its MLflow run ends FAILED
        except BaseException as err:  # Ctrl-C, or the driver itself failed: the runs still open end with it
            for run in runs.values():
                with contextlib.suppress(BaseException):
                    run.close(err)
            raise
    if failed:
        raise StageError(
            f"{len(failed)} of {len(specs)} runs did not finish ({'; '.join(failed)}); the {len(specs) - len(failed)} "
            "that did are kept: rerun the stage to train only the rest"
        )


def _epoch_queue(ray: Any) -> Any:
    """The queue workers send epochs back to the driver through: a Ray actor that reserves no CPU, placed on the
    driver's node, so it lives as long as the driver whichever worker node dies."""
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def _relay(queue: Any, runs: dict[int, _OpenRun]) -> Any:
    """Pass every epoch the workers have sent so far to its run's driver-side callback; the queue, or None once it
    is gone (its node died: the runs' results bring the epochs it did not pass on)."""
    if queue is None:
        return None
    try:
        size = queue.qsize()
        arrived = queue.get_nowait_batch(size) if size else []
    except Exception as err:  # a Ray error: the actor is gone
        log.warning("the queue of live epochs is gone (%s): the rest come with each run's result", type(err).__name__)
        return None
    for index, epoch, data in arrived:
        if index in runs:
            runs[index].relay(epoch, *data)
    return queue


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
