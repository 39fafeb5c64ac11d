"""Benchmark: no run lost under load. Queued experiments of the synthetic headline (`dvc exp run --queue -S wd=…`)
on two queue workers, logging to one MLflow store at once: every experiment lands, every MLflow run it logs is
there, FINISHED, with every epoch; `dvc exp show` and the MLflow runs page (headless Chromium) timed at that count.

    python -m benchmarks.load                           # 24 experiments, on sqlite then on the team server, twice each
    python -m benchmarks.load --repeat 3 --stores server
    python -m benchmarks.load --experiments 4 --seeds 2 --epochs 10 --repeat 1    # a quick look

Each repetition starts from a fresh scratch project and a fresh, empty store (the sqlite file of the project, or
`mlflow server` on a new PostgreSQL database), so the first two stages race to create the MLflow experiment every
time. In the last repetition of each store one stage is SIGKILLed while its MLflow runs are open, as the kernel's
OOM killer would: its experiment fails, the next stage to start marks those runs KILLED, and the experiment is
queued again, as a user would. Whatever had finished must still be there, and nothing may stay RUNNING.

Each experiment is the headline as params.yaml has it (its seeds and epochs; `--seeds` and `--epochs` shrink it):
1 + seeds MLflow runs, each seed's with every epoch. The figures go to benchmarks/results/load-<machine class>.json
(load_<store>-… when one store is measured), with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import postgres  # noqa: E402
from benchmarks.browser import MISSING, Page, find_chromium, run_links  # noqa: E402
from benchmarks.machine import this_machine, write_result  # noqa: E402
from benchmarks.mlflow_server import mlflow_server  # noqa: E402
from wdlab.tracking import PID_TAG  # noqa: E402
from wdlab.workspace import commit_all, copy_project, dvc, load_params, set_key, tool_env, write_params  # noqa: E402

STAGE = "headline_synthetic"
STAGE_MODULE = "stages.train_synthetic"  # the process a queued experiment of STAGE runs, and the one killed
PARAMS = load_params()
EXPERIMENT = PARAMS["tracking"]["experiment_synthetic"]
TRAINING = "?workflowType=machine_learning"  # the MLflow UI's "Model training" view: an experiment opens on its runs
STORES = ("sqlite", "server")
POLL_S = 5  # between `dvc queue status` calls: each is a DVC process, on the cores the stages train on


@dataclass
class Repetition:
    """What one repetition found, and how long what a user waits for took."""

    store: str
    experiments: int  # queued
    landed: int  # in `dvc exp show` with their metrics, the killed one's second attempt included
    runs_expected: int  # (1 + seeds) per landed experiment: the headline's run and one per seed
    runs_found: int  # of those: FINISHED, in the experiment, under their headline run
    runs_running: int  # anywhere in the store, after every stage ended
    runs_elsewhere: int  # in another MLflow experiment (the Default one, say)
    epochs_missing: int  # seed runs whose curves lack an epoch
    killed: str | None  # the experiment whose stage was SIGKILLed (its wd), if any
    killed_runs: int  # runs that stage left, marked KILLED by the next stage
    wall_s: float  # `dvc queue start -j 2` until the queue is drained (the killed experiment's retry not included)
    exp_show_s: float  # `dvc exp show` at this count (the table a user reads)
    ui_s: float | None  # the MLflow runs page in headless Chromium, a fresh browser profile, until its runs are drawn
    ui_again_s: float | None  # the same page loaded again
    load_before: float
    load_after: float

    @property
    def lost(self) -> bool:
        return (
            self.landed < self.experiments
            or self.runs_found < self.runs_expected
            or self.runs_running + self.runs_elsewhere + self.epochs_missing > 0
        )


def scratch_project(dest: Path, seeds: int, epochs: int, tracking_uri: str | None) -> Path:
    """A fresh project at `dest` with the synthetic data generated and committed, the study shrunk to `seeds` seeds
    of `epochs` epochs, logging to `tracking_uri` (None: the project's own sqlite store)."""
    project = copy_project(dest)
    params = load_params(project / "params.yaml")
    set_key(params, "synthetic.seeds", list(range(seeds)))
    set_key(params, "synthetic.train.epochs", epochs)
    if tracking_uri is not None:
        set_key(params, "tracking.uri", tracking_uri)
    write_params(project / "params.yaml", params)
    dvc(project, "repro", "generate")
    commit_all(project, "load benchmark: the synthetic data")
    return project


def strengths(count: int) -> list[str]:
    """`count` distinct values of wd, so no experiment is restored from another's run cache."""
    return [f"{0.25 * i:g}" for i in range(count)]


def start_queue(project: Path) -> None:
    """`dvc queue start -j 2`, returning once the two workers are up: they inherit its output, so a caller that
    captured that output would wait for them to exit, that is for the whole queue."""
    command = [sys.executable, "-m", "dvc", "queue", "start", "-j", "2"]
    null = subprocess.DEVNULL
    subprocess.run(command, cwd=project, env=tool_env(), stdout=null, stderr=null, stdin=null, check=True, timeout=300)


def queue_status(project: Path) -> str:
    return dvc(project, "queue", "status").stdout


def drain(project: Path, timeout: float, kill_after: int | None, client) -> tuple[str, str | None]:
    """Wait until nothing is queued or running; with `kill_after`, SIGKILL one stage once that many experiments have
    succeeded and it has its MLflow runs open. Returns the last `dvc queue status` and the killed stage's wd."""
    deadline, killed = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status = queue_status(project)
        if "Running" not in status and "Queued" not in status:
            return status, killed
        if kill_after is not None and killed is None and status.count("Success") >= kill_after:
            killed = kill_a_stage_mid_run(project, client, deadline)
        time.sleep(POLL_S)
    raise SystemExit(f"the queue was still busy after {timeout:.0f} s:\n{status}")


def stages_of(project: Path) -> list[int]:
    """The pids of the training stages this project's queue is running now (in its temp copies under .dvc/tmp)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if STAGE_MODULE.encode() not in (entry / "cmdline").read_bytes():
                continue
            if (entry / "cwd").resolve().is_relative_to(project.resolve()):
                found.append(int(entry.name))
    return found


def kill_a_stage_mid_run(project: Path, client, deadline: float) -> str | None:
    """SIGKILL a running stage of the project as soon as it has an MLflow run open; its experiment's wd (read from
    its own params.yaml), or None if every stage finished before one could be caught."""
    next_status = time.monotonic() + POLL_S
    while time.monotonic() < deadline:
        for pid in stages_of(project):
            if not client.search_runs(
                [experiment_id(client)], f"attributes.status = 'RUNNING' and tags.`{PID_TAG}` = '{pid}'"
            ):
                continue
            with contextlib.suppress(OSError):
                wd = str(load_params(Path(f"/proc/{pid}/cwd") / "params.yaml")["wd"])
                os.kill(pid, signal.SIGKILL)
                print(f"  SIGKILLed stage {pid} (wd={wd}) with its MLflow runs open")
                return wd
        if time.monotonic() > next_status:  # a DVC process: asked only now and then
            if "Running" not in queue_status(project):
                return None
            next_status = time.monotonic() + POLL_S
        time.sleep(0.2)
    return None


def experiment_id(client) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return "-1" if experiment is None else experiment.experiment_id  # -1: none yet (search_runs finds nothing)


def landed_experiments(project: Path) -> dict[str, str]:
    """{DVC experiment name: its wd} of every experiment `dvc exp show` lists with the headline's metrics."""
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    landed = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                metrics = (data.get("metrics") or {}).get("metrics/synthetic_headline.json", {}).get("data")
                params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
                if rev.get("name") and metrics:
                    landed[rev["name"]] = f"{params['wd']:g}"
    return landed


def all_runs(client, experiment_ids: list[str]) -> list:
    """Every run of these experiments, page by page (search_runs returns at most max_results per call)."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, max_results=1000, page_token=token, run_view_type=ViewType.ALL)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def count_runs(client, landed: dict[str, str], seeds: int, epochs: int) -> dict[str, int]:
    """Expected and found runs of the landed experiments, and every sign of a lost or stuck run in the store."""
    from mlflow.entities import ViewType

    every = all_runs(client, [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)])
    ours = experiment_id(client)
    here = [run for run in every if run.info.experiment_id == ours]
    found = missing_epochs = 0
    for name in landed:
        headline = [
            run
            for run in here
            if run.data.tags.get("dvc.exp_name") == name
            and run.data.tags.get("wd_lab.role") == "synthetic-headline"
            and run.info.status == "FINISHED"
        ]
        if len(headline) != 1:
            continue
        found += 1
        members = [
            run
            for run in here
            if run.data.tags.get("mlflow.parentRunId") == headline[0].info.run_id and run.info.status == "FINISHED"
        ]
        found += len(members)
        for member in members:
            series = [key for key in member.data.metrics if not key.startswith("final_") and key != "diverged"]
            steps = {key: [m.step for m in client.get_metric_history(member.info.run_id, key)] for key in series}
            if not series or any(sorted(s) != list(range(epochs + 1)) for s in steps.values()):
                missing_epochs += 1
    return {
        "runs_expected": len(landed) * (1 + seeds),
        "runs_found": found,
        "runs_running": sum(run.info.status == "RUNNING" for run in every),
        "runs_elsewhere": len(every) - len(here),
        "epochs_missing": missing_epochs,
        "killed_runs": sum(run.info.status == "KILLED" for run in here),
    }


def report_failures(project: Path, status: str) -> None:
    """Print the log tail of every experiment the queue says failed: a failure is a figure's explanation."""
    for line in status.splitlines():
        fields = line.split()
        if fields and fields[-1] == "Failed":
            logs = dvc(project, "queue", "logs", fields[0], check=False)
            print(
                f"  experiment {fields[1]} failed; its log ends:\n    "
                + "\n    ".join((logs.stdout + logs.stderr).strip().splitlines()[-15:])
            )


def timed(project: Path, *args: str) -> float:
    start = time.perf_counter()
    dvc(project, *args)
    return time.perf_counter() - start


def time_runs_page(chromium: str | None, base: str, client, profile: Path) -> tuple[float | None, float | None]:
    """Seconds until the experiment's runs page shows its newest top-level run and every top-level run (or the
    "Load more" button for the rest), in a fresh headless Chromium; then the same page loaded again."""
    if chromium is None:
        return None, None
    top = sorted(
        (run for run in all_runs(client, [experiment_id(client)]) if "mlflow.parentRunId" not in run.data.tags),
        key=lambda run: -run.info.start_time,
    )
    wanted, newest = {run.info.run_id for run in top}, top[0].info.run_id

    def ready(dom: str) -> bool:
        shown = set(run_links(dom)) & wanted
        return newest in shown and (shown == wanted or "Load more" in dom)

    url = f"{base}/#/experiments/{experiment_id(client)}{TRAINING}"
    with Page(chromium, profile) as page:
        first = page.open(url, ready, timeout=120)
        again = page.open(url, ready, timeout=120)
    return first, again


@contextlib.contextmanager
def store(kind: str, home: Path) -> Iterator[str | None]:
    """The tracking URI a fresh project logs to: None for its own sqlite file, else `mlflow server` on a new
    PostgreSQL database (docs/mlflow.md's team server), stopped afterwards."""
    if kind == "sqlite":
        yield None
        return
    home.mkdir(parents=True)
    with (
        postgres.postgres_server() as database,
        mlflow_server(home, home / "mlflow.log", database, artifacts=home / "artifacts") as base,
    ):
        yield base


def repetition(kind: str, scratch: Path, args: argparse.Namespace, kill: bool, chromium: str | None) -> Repetition:
    import mlflow

    with store(kind, scratch / "store") as uri:
        project = scratch_project(scratch / "project", args.seeds, args.epochs, uri)
        client = mlflow.MlflowClient(uri or f"sqlite:///{project / 'mlflow.db'}")
        for wd in strengths(args.experiments):
            dvc(project, "exp", "run", "--queue", "-S", f"wd={wd}", STAGE)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        try:
            start_queue(project)
            status, killed = drain(project, args.timeout, max(1, args.experiments // 3) if kill else None, client)
            wall = time.perf_counter() - start
            if killed is not None:  # what a user does: queue the failed experiment again
                dvc(project, "exp", "run", "--queue", "-S", f"wd={killed}", STAGE)
                start_queue(project)
                status, _ = drain(project, args.timeout, None, client)
        finally:
            dvc(project, "queue", "stop", "--kill", check=False)
        report_failures(project, status)
        load_after = os.getloadavg()[0]
        exp_show = timed(project, "exp", "show", "--no-pager")
        landed = landed_experiments(project)
        counts = count_runs(client, landed, args.seeds, args.epochs)
        if uri is None:
            with mlflow_server(project, scratch / "ui.log") as base:
                ui, ui_again = time_runs_page(chromium, base, client, scratch / "browser")
        else:
            ui, ui_again = time_runs_page(chromium, uri, client, scratch / "browser")
    return Repetition(
        store=kind,
        experiments=args.experiments,
        landed=len(set(landed.values()) & set(strengths(args.experiments))),
        killed=killed,
        wall_s=round(wall, 1),
        exp_show_s=round(exp_show, 2),
        ui_s=None if ui is None else round(ui, 2),
        ui_again_s=None if ui_again is None else round(ui_again, 2),
        load_before=round(load_before, 2),
        load_after=round(load_after, 2),
        **counts,
    )


def summary(reps: list[Repetition]) -> dict:
    """Per store: each repetition's figures as one list, and whether anything was lost in any."""
    figures = {}
    for kind in dict.fromkeys(rep.store for rep in reps):
        mine = [dataclasses.asdict(rep) for rep in reps if rep.store == kind]
        figures[kind] = {
            "repetitions": len(mine),
            "nothing_lost": not any(rep.lost for rep in reps if rep.store == kind),
            **{key: [rep[key] for rep in mine] for key in mine[0] if key != "store"},
        }
        walls = figures[kind]["wall_s"]
        figures[kind]["wall_s_median"] = round(statistics.median(walls), 1)
    return figures


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--experiments", type=int, default=24, help="queued experiments per repetition (default: 24)")
    cli.add_argument("--repeat", type=int, default=2, help="repetitions per store, the last one kills a stage (2)")
    cli.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES), help="the stores (both)")
    cli.add_argument(
        "--seeds",
        type=int,
        default=len(PARAMS["synthetic"]["seeds"]),
        help="seeds per experiment: 1 + seeds MLflow runs each (default: params.yaml's)",
    )
    cli.add_argument(
        "--epochs",
        type=int,
        default=PARAMS["synthetic"]["train"]["epochs"],
        help="epochs per run (default: params.yaml's)",
    )
    cli.add_argument("--timeout", type=float, default=1800, help="seconds a queue may take to drain (1800)")
    cli.add_argument("--no-kill", action="store_true", help="kill no stage in the last repetition")
    cli.add_argument("--result", help="the results file's name (default: load, or load_<store> for one store)")
    args = cli.parse_args()
    if "server" in args.stores and (reason := postgres.missing()):
        raise SystemExit(reason)
    machine = this_machine()
    print(machine.describe())
    chromium = find_chromium()
    if chromium is None:
        print(f"no UI timing: {MISSING}")
    name = args.result or ("load" if len(args.stores) > 1 else f"load_{args.stores[0]}")
    size = {"size": {"experiments": args.experiments, "seeds": args.seeds, "epochs": args.epochs}}
    reps = []
    for kind in args.stores:
        for index in range(args.repeat):
            kill = not args.no_kill and index == args.repeat - 1
            scratch = Path(tempfile.mkdtemp(prefix="wd-lab-load-"))
            try:
                rep = repetition(kind, scratch, args, kill, chromium)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            reps.append(rep)
            write_result(name, machine, size | summary(reps))  # after each repetition: a stopped run keeps the rest
            print(
                f"{kind} #{index + 1}: {rep.landed}/{rep.experiments} experiments, runs {rep.runs_found}/"
                f"{rep.runs_expected} found, {rep.runs_running} RUNNING, {rep.runs_elsewhere} elsewhere, "
                f"{rep.epochs_missing} short of epochs, killed {rep.killed} ({rep.killed_runs} KILLED) | "
                f"{rep.wall_s} s wall, exp show {rep.exp_show_s} s, UI {rep.ui_s} s (again {rep.ui_again_s} s) | "
                f"load {rep.load_before} → {rep.load_after}" + ("  LOST" if rep.lost else "")
            )
    print(f"written: {write_result(name, machine, size | summary(reps))}")
    if any(rep.lost for rep in reps):
        raise SystemExit("a run or an experiment was lost: see the lines marked LOST")


if __name__ == "__main__":
    main()
