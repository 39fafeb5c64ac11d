"""Sharing through a DVC remote, as docs/sharing.md tells a team: one colleague pushes the models, an experiment and the
run cache to an SSH remote (a real sshd on 127.0.0.1) and the code to a bare git repo; another clones, pulls, and
gets the same results without training anything."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ssh_server
from tests.helpers.stages import ran_stages
from wdlab.workspace import SYNTHETIC_BRANCH, clone_project, commit_all, dvc, git, run

# What `dvc exp run -S wd=3` changes: the headline run's folder, its curve and its metrics
HEADLINE = ("models/synthetic/headline", "results/synthetic/headline_curve.csv", "metrics/synthetic_headline.json")
REMOTE = "storage"


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 with two authorized keys, one per colleague; stopped when the test ends,
    passed or failed."""
    reason = ssh_server.missing()
    if reason:
        pytest.skip(reason)
    with ssh_server.running(tmp_path / "sshd", keys=2) as server:
        yield server


def colleague(home: Path, server: ssh_server.Server, host_key: Path | None = None) -> dict[str, str]:
    """The environment of one colleague's commands: a HOME of their own whose ~/.ssh/known_hosts holds the server's
    host key (or `host_key`'s, a wrong one; dvc-ssh reads neither today, see docs/sharing.md), no SSH agent, no
    ~/.ssh/config or global DVC or git config from this machine."""
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh/known_hosts").write_text(server.known_hosts_line(host_key))
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SSH_AUTH_SOCK": ""}


def set_credentials(project: Path, server: ssh_server.Server, key: Path, env: dict[str, str]) -> None:
    """A colleague's own login for the shared remote, in the git-ignored .dvc/config.local."""
    dvc(project, "remote", "modify", "--local", REMOTE, "user", server.user, **env)
    dvc(project, "remote", "modify", "--local", REMOTE, "keyfile", str(key), **env)


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
def test_a_colleague_gets_models_experiment_and_run_cache_through_an_ssh_remote(synthetic_template, sshd, tmp_path):
    times: dict[str, float] = {}
    origin = tmp_path / "origin.git"  # the team's git server
    store = tmp_path / "dvc-store"  # the remote's folder on the SSH server (this machine, over SSH)
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))

    # ---- Alice: the reproduced project, a remote for the team, an experiment, everything pushed ----
    alice = clone_project(synthetic_template.path, tmp_path / "alice")
    env_a = colleague(tmp_path / "home-alice", sshd)
    dvc(alice, "remote", "add", "-d", REMOTE, sshd.url(store), **env_a)  # URL in .dvc/config, committed
    set_credentials(alice, sshd, sshd.keys[0], env_a)
    commit_all(alice, "DVC remote for the team")
    assert REMOTE in (alice / ".dvc/config").read_text() and "keyfile" not in (alice / ".dvc/config").read_text()
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
    assert f"Accepted publickey for {sshd.user}" in sshd.log_tail(100_000)

    # ---- Bob: a fresh clone with an empty cache and his own key ----
    bob = tmp_path / "bob"
    git(tmp_path, "clone", "-q", str(origin), str(bob))
    git(bob, "config", "user.email", "bob@wd-lab.invalid")
    git(bob, "config", "user.name", "Bob")
    env_b = colleague(tmp_path / "home-bob", sshd)
    set_credentials(bob, sshd, sshd.keys[1], env_b)
    assert not (bob / ".dvc/cache").exists() and not (bob / HEADLINE[0]).exists(), "no outputs before the pull"

    timed(times, "bob dvc pull --run-cache", bob, "pull", "--run-cache", "--with-deps", *SYNTHETIC_BRANCH, **env_b)
    assert "authorized_keys:2" in sshd.log_tail(100_000), "Bob logged in with his own key"
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


# dvc-ssh's SSHFileSystem (what a `dvc remote` with an ssh:// URL opens) listing the server's /, printing a count
LIST_ROOT = """
import sys
from dvc_ssh import SSHFileSystem
port, user, keyfile = sys.argv[1:]
print(len(SSHFileSystem(host="127.0.0.1", port=int(port), user=user, keyfile=keyfile).ls("/")))
"""


def test_dvc_ssh_does_not_check_the_servers_host_key(sshd, tmp_path):
    """What docs/sharing.md warns of: DVC's SSH remote connects to a server whose host key is not the one in
    ~/.ssh/known_hosts, which OpenSSH's own client refuses. When this fails, dvc-ssh checks host keys: update the page
    (and keep writing the right key in `colleague`)."""
    wrong = ssh_server.keygen(tmp_path / "another-host", "another host's key")
    env = colleague(tmp_path / "home", sshd, host_key=Path(f"{wrong}.pub"))
    client = [sys.executable, "-c", LIST_ROOT, str(sshd.port), sshd.user, str(sshd.keys[0])]
    assert int(run(client, cwd=tmp_path, timeout=60, **env).stdout) > 0
    if shutil.which("ssh"):
        # OpenSSH finds ~ through the password database, not $HOME: name the file
        known_hosts = tmp_path / "home/.ssh/known_hosts"
        openssh = run(
            ["ssh", "-p", str(sshd.port), "-i", str(sshd.keys[0]), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", f"{sshd.user}@127.0.0.1",
             "true"],
            cwd=tmp_path, check=False, timeout=60, **env,
        )  # fmt: skip
        assert openssh.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in openssh.stderr, openssh.stderr
