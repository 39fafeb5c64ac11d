"""Sharing through a DVC remote, as docs/sharing.md tells a team: one colleague pushes the models, an experiment and the
run cache to a WebDAV remote over HTTPS (a real WsgiDAV server on 127.0.0.1, its certificate signed by the team's CA)
and the code to a bare git repo; another clones, pulls, and gets the same results without training anything. A server
with any other certificate (an impostor at the remote's address) gets refused before a request, a password or a file
reaches it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import trustme

from tests.helpers import webdav_server
from tests.helpers.stages import ran_stages
from wdlab.workspace import ROOT, SYNTHETIC_BRANCH, clone_project, commit_all, dvc, git, run

# What `dvc exp run -S wd=3` changes: the headline run's folder, its curve and its metrics
HEADLINE = ("models/synthetic/headline", "results/synthetic/headline_curve.csv", "metrics/synthetic_headline.json")
REMOTE = "storage"
STORE = "/wd-lab"  # the remote's folder on the server, created there once by its admin
# A line of WsgiDAV's request log ("127.0.0.1 - alice - [date] "PUT /wd-lab/..."): a request got past TLS
REQUEST = re.compile(r'"(?:GET|HEAD|PUT|POST|DELETE|MOVE|COPY|MKCOL|PROPFIND|PROPPATCH|OPTIONS) /')


def serve(folder: Path, ca: trustme.CA) -> webdav_server.Server:
    """A WebDAV server with a certificate from `ca` and a login for each colleague, its remote folder made."""
    server = webdav_server.start(folder, ca, users=("alice", "bob"))
    (server.root / STORE.lstrip("/")).mkdir()
    return server


@pytest.fixture
def team_ca() -> trustme.CA:
    """The team's own certificate authority: it signs the team server's certificate, each colleague pins it."""
    return trustme.CA(organization_name="wd-lab team")


@pytest.fixture
def webdav(tmp_path, team_ca):
    """The team's WebDAV server over HTTPS on 127.0.0.1, one login per colleague; stopped when the test ends, passed or
    failed."""
    server = serve(tmp_path / "webdav", team_ca)
    try:
        yield server
    finally:
        server.stop()


def colleague(home: Path, server: webdav_server.Server) -> dict[str, str]:
    """The environment of one colleague's commands: a HOME of their own holding the team CA's certificate (as the
    server's admin hands it out), no global DVC or git config from this machine."""
    home.mkdir(parents=True)
    shutil.copy(server.ca_file, home / "wd-lab-ca.pem")
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def set_credentials(project: Path, server: webdav_server.Server, user: str, env: dict[str, str]) -> None:
    """A colleague's own login for the shared remote and the team CA its server must prove itself with
    (`ssl_verify`), in the git-ignored .dvc/config.local."""
    dvc(project, "remote", "modify", "--local", REMOTE, "user", user, **env)
    dvc(project, "remote", "modify", "--local", REMOTE, "password", server.passwords[user], **env)
    dvc(project, "remote", "modify", "--local", REMOTE, "ssl_verify", f"{env['HOME']}/wd-lab-ca.pem", **env)


def stored(server: webdav_server.Server) -> list[str]:
    """Every file the server holds under the remote's folder."""
    root = server.root / STORE.lstrip("/")
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def contents(project: Path, paths: tuple[str, ...]) -> dict[str, bytes]:
    """Every file under `paths` (files or folders) in `project`, relative path → bytes."""
    found = {}
    for name in paths:
        root = project / name
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            found[str(path.relative_to(project))] = path.read_bytes()
    return found


def experiments(project: Path, env: dict[str, str]) -> dict[str, dict]:
    """`dvc exp show --json` as experiment name → its data (params, metrics)."""
    rows = json.loads(dvc(project, "exp", "show", "--json", **env).stdout)
    return {
        exp.get("name") or exp["revs"][0]["name"]: exp["revs"][0]["data"]
        for row in rows
        for exp in row.get("experiments") or []
    }


def timed(times: dict[str, float], step: str, project: Path, *args: str, tool: bool = True, **env: str):
    """`dvc *args` (or `python *args` when not `tool`) in `project`, its wall time recorded under `step`."""
    begun = time.monotonic()
    result = dvc(project, *args, **env) if tool else run([sys.executable, *args], cwd=project, **env)
    times[step] = time.monotonic() - begun
    return result


@pytest.mark.slow
def test_a_colleague_gets_models_experiment_and_run_cache_through_a_webdav_remote(synthetic_template, webdav, tmp_path):
    times: dict[str, float] = {}
    origin = tmp_path / "origin.git"  # the team's git server
    store = webdav.root / STORE.lstrip("/")  # the remote's folder, as the server stores it
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))

    # ---- Alice: the reproduced project, a remote for the team, an experiment, everything pushed ----
    alice = clone_project(synthetic_template.path, tmp_path / "alice")
    env_a = colleague(tmp_path / "home-alice", webdav)
    dvc(alice, "remote", "add", "-d", REMOTE, webdav.url(STORE), **env_a)  # URL in .dvc/config, committed
    set_credentials(alice, webdav, "alice", env_a)
    commit_all(alice, "DVC remote for the team")
    committed = (alice / ".dvc/config").read_text()
    assert REMOTE in committed and "password" not in committed and "ssl_verify" not in committed
    git(alice, "remote", "add", "origin", str(origin))

    timed(times, "alice dvc push --run-cache", alice, "push", "--run-cache", **env_a)  # the committed results
    git(alice, "push", "-q", "origin", "main")
    run_a = timed(
        times, "alice exp run -S wd=3 (trains)", alice, "exp", "run", "-S", "wd=3", *SYNTHETIC_BRANCH, **env_a
    )
    assert "headline_synthetic" in ran_stages(run_a.stdout)
    (name,) = dvc(alice, "exp", "list", "--name-only", **env_a).stdout.split()
    headline_a = contents(alice, HEADLINE)
    timed(times, "alice dvc exp push --run-cache", alice, "exp", "push", "--run-cache", "origin", name, **env_a)
    shared = timed(times, "alice python -m wdlab.share", alice, "-m", "wdlab.share", tool=False, **env_a)
    assert re.search(r"\d+ run records name \d+ cache objects: [1-9]\d* uploaded$", shared.stdout.strip()), (
        shared.stdout
    )
    assert (store / "files/md5").is_dir() and (store / "runs").is_dir(), "outputs and run cache on the remote"
    assert re.search(r'- alice - .*"PUT /wd-lab/files/md5/', webdav.log_tail(1_000_000)), "Alice logged in and pushed"

    # ---- Bob: a fresh clone with an empty cache and his own login ----
    bob = tmp_path / "bob"
    git(tmp_path, "clone", "-q", str(origin), str(bob))
    git(bob, "config", "user.email", "bob@wd-lab.invalid")
    git(bob, "config", "user.name", "Bob")
    env_b = colleague(tmp_path / "home-bob", webdav)
    set_credentials(bob, webdav, "bob", env_b)
    assert not (bob / ".dvc/cache").exists() and not (bob / HEADLINE[0]).exists(), "no outputs before the pull"

    timed(times, "bob dvc pull --run-cache", bob, "pull", "--run-cache", "--with-deps", *SYNTHETIC_BRANCH, **env_b)
    assert re.search(r'- bob - .*"GET /wd-lab/files/md5/', webdav.log_tail(1_000_000)), "Bob logged in and pulled"
    repro = timed(times, "bob dvc repro (nothing)", bob, "repro", *SYNTHETIC_BRANCH, **env_b)
    assert ran_stages(repro.stdout) == set(), repro.stdout
    skipped = set(re.findall(r"Stage '([^']+)' didn't change, skipping", repro.stdout))
    assert {"validate", "generate", "headline_synthetic", "train_synthetic@l2", *SYNTHETIC_BRANCH} <= skipped

    # Alice's experiment, with its param and metric
    timed(times, "bob dvc exp pull", bob, "exp", "pull", "origin", name, **env_b)
    shown = experiments(bob, env_b)[name]
    assert shown["params"]["params.yaml"]["data"]["wd"] == 3
    assert shown["metrics"]["metrics/synthetic_headline.json"]["data"] == json.loads(
        headline_a["metrics/synthetic_headline.json"]
    )

    # the same experiment run by Bob: restored from the shared run cache, nothing trained, Alice's bits
    run_b = timed(
        times,
        "bob exp run --pull -S wd=3 (restored)",
        bob,
        "exp",
        "run",
        "--pull",
        "-S",
        "wd=3",
        *SYNTHETIC_BRANCH,
        **env_b,
    )
    assert not {s for s in ran_stages(run_b.stdout) if s.startswith(("train_", "headline_"))}, run_b.stdout
    assert "Stage 'headline_synthetic' is cached - skipping run, checking out outputs" in run_b.stdout
    assert contents(bob, HEADLINE) == headline_a
    assert not (bob / "mlflow.db").exists() and not (bob / "mlruns").exists(), "nothing trained, nothing logged"

    # the λ = 0 baseline's curves beside Alice's λ = 3 ones
    plots = bob / "plots-diff"
    dvc(bob, "plots", "diff", "main", name, "-o", str(plots), **env_b)
    html = (plots / "index.html").read_text()
    assert "Synthetic headline run" in html and name in html

    print("\n" + "\n".join(f"{step:>34}: {seconds:6.1f} s" for step, seconds in times.items()))


def small_project(path: Path, env: dict[str, str]) -> Path:
    """A DVC project with one stage run: an output to `dvc push` and a run record for `wdlab.share`."""
    path.mkdir()
    git(path, "init", "-q")
    dvc(path, "init", "-q", **env)
    (path / "data.txt").write_text("the team's data\n")
    (path / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp data.txt copy.txt\n    deps: [data.txt]\n    outs: [copy.txt]\n"
    )
    dvc(path, "repro", **env)
    return path


def share(project: Path, env: dict[str, str]):
    """`python -m wdlab.share` in `project`, this checkout's package on the path."""
    return run([sys.executable, "-m", "wdlab.share"], cwd=project, check=False, PYTHONPATH=str(ROOT), **env)


def refused(push, lines: int = 1) -> bool:
    """`dvc push` failed with `lines` error lines, each naming the certificate check."""
    errors = [line for line in push.stderr.splitlines() if line.startswith("ERROR")]
    return push.returncode != 0 and len(errors) == lines and all("CERTIFICATE_VERIFY_FAILED" in e for e in errors)


def test_a_server_with_the_wrong_certificate_gets_nothing(webdav, tmp_path):
    """An impostor at the remote's address (a server whose certificate the team's CA did not sign): `dvc push` and
    `python -m wdlab.share` refuse it in one line (`dvc push --run-cache` in two), before any request, so neither a
    file nor Alice's password reaches it. Without the pinned CA the public CAs judge, and refuse it too. The team's
    server, the same commands, gets the files."""
    impostor = serve(tmp_path / "impostor", trustme.CA(organization_name="not the team"))
    try:
        env = colleague(tmp_path / "home", webdav)
        project = small_project(tmp_path / "project", env)
        dvc(project, "remote", "add", "-d", REMOTE, impostor.url(STORE), **env)
        set_credentials(project, webdav, "alice", env)

        push = dvc(project, "push", check=False, **env)
        assert refused(push), push.stderr
        push = dvc(project, "push", "--run-cache", check=False, **env)  # the run records' transfer fails first
        assert refused(push, lines=2), push.stderr
        shared = share(project, env)
        assert shared.returncode == 1 and shared.stdout == "", shared.stdout
        assert re.fullmatch(
            r"wdlab\.share: the remote's server is not the team's \(.+\): nothing was sent; .+\n", shared.stderr
        ), shared.stderr
        dvc(project, "remote", "modify", "--local", "--unset", REMOTE, "ssl_verify", **env)
        push = dvc(project, "push", check=False, **env)
        assert refused(push), push.stderr

        assert stored(impostor) == [], "nothing reached the impostor"
        assert not REQUEST.search(impostor.log_tail(1_000_000)), impostor.log_tail()

        dvc(project, "remote", "modify", REMOTE, "url", webdav.url(STORE), **env)
        set_credentials(project, webdav, "alice", env)
        assert "1 file pushed" in dvc(project, "push", **env).stdout
        assert share(project, env).stdout == "1 run records name 1 cache objects: 0 uploaded\n"
        md5 = hashlib.md5((project / "copy.txt").read_bytes()).hexdigest()
        assert stored(webdav) == [f"files/md5/{md5[:2]}/{md5[2:]}"]
        assert REQUEST.search(webdav.log_tail(1_000_000))
    finally:
        impostor.stop()
