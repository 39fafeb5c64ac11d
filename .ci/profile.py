"""Run the CI profile: the whole pipeline through real `dvc repro` in a temp copy, then the regression check.

CIFAR-10 comes from a small archive in the official format, generated and served from 127.0.0.1: the "ci"
stand-in of wdlab/cifar10/standin.py, whose images behave like CIFAR-10 for the profile's small CNN (test accuracy
near 60 %, a visible generalisation gap at λ = 0, chance if labels and images fall out of step).
Usage (from the project root, in the venv): python .ci/profile.py [--update-baseline] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ruamel.yaml import YAML  # noqa: E402

from wdlab.cifar10.standin import FixtureArchive, build_archive, served  # noqa: E402
from wdlab.workspace import commit_all, copy_project, dvc, load_params, run, write_params  # noqa: E402

PROFILE = ROOT / ".ci" / "profile.yaml"
IMAGES_PER_BATCH = 120  # 600 training images: 100 held out for validation, 500 trained on
TEST_IMAGES = 600  # a large test batch keeps the test accuracy within ~1 point across training seeds


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = merge(base[key], value) if isinstance(value, dict) else value
    return base


def profile_params() -> dict:
    """params.yaml with the keys of .ci/profile.yaml replaced (cifar10.download is set where the archive is served)."""
    return merge(load_params(), YAML(typ="safe", pure=True).load(PROFILE.read_text()))


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument(
        "--update-baseline", action="store_true", help="accept this run's metrics as baselines/ci, on purpose"
    )
    cli.add_argument("--keep", action="store_true", help="keep the temp copy for inspection")
    args = cli.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="wd-lab-ci-"))
    try:
        return run_profile(scratch, args.update_baseline)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def run_profile(scratch: Path, update_baseline: bool) -> int:
    project, archive = prepare(scratch)
    repro = reproduce(project, archive)
    print(repro.stdout[-3000:], repro.stderr[-3000:], sep="\n", flush=True)
    if repro.returncode != 0:
        print("CI profile: dvc repro failed", file=sys.stderr)
        return repro.returncode
    if update_baseline:
        run([sys.executable, "-m", "stages.check", "--profile", "ci", "--update"], cwd=project)
        for recorded in (project / "baselines" / "ci").glob("*.json"):
            shutil.copy(recorded, ROOT / "baselines" / "ci" / recorded.name)
            print(f"updated baselines/ci/{recorded.name}")
    check = regression_check(project)
    print(check.stdout, check.stderr, sep="\n")
    summarise(check)
    return check.returncode


def prepare(scratch: Path) -> tuple[Path, FixtureArchive]:
    """A temp copy of the project with the baselines and checks, and the generated CIFAR-10 stand-in to serve."""
    project = copy_project(scratch / "project")
    shutil.copytree(ROOT / "baselines", project / "baselines")
    shutil.copy(ROOT / "checks.yaml", project / "checks.yaml")
    archive = build_archive(
        scratch / "serve", images_per_batch=IMAGES_PER_BATCH, difficulty="ci", test_images=TEST_IMAGES
    )
    return project, archive


def reproduce(project: Path, archive: FixtureArchive, *targets: str, **env: str) -> subprocess.CompletedProcess:
    """`dvc repro [targets]` with the profile's params, the archive served from 127.0.0.1 meanwhile; `env` adds
    environment variables (another CPU kernel set, say)."""
    with served(archive) as url:
        params = profile_params()
        params["cifar10"]["download"] |= {"url": url, "md5": archive.md5}
        write_params(project / "params.yaml", params)
        commit_all(project, "CI profile")
        print(f"CI profile: dvc repro {' '.join(targets)} in {project}", flush=True)
        return dvc(project, "repro", *targets, check=False, timeout=1800, **env)


def summarise(check: subprocess.CompletedProcess, heading: str = "Regression check (CI profile)") -> None:
    """The check's table in the GitHub Actions job summary, when there is one."""
    if summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(summary, "a") as handle:
            handle.write(f"## {heading}\n\n```\n{check.stdout}{check.stderr}```\n")


def regression_check(project: Path, *studies: str) -> subprocess.CompletedProcess:
    """`python -m stages.check --profile ci` (for `studies` only, if given) in the project copy."""
    return run(
        [sys.executable, "-m", "stages.check", "--profile", "ci", *(f"--study={study}" for study in studies)],
        cwd=project,
        check=False,
    )


if __name__ == "__main__":
    sys.exit(main())
