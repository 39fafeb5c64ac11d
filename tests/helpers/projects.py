"""The projects the end-to-end tests start from: fresh git + DVC copies (wdlab.workspace) reproduced with real DVC."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from wdlab.cifar10.standin import build_archive, served
from wdlab.workspace import SYNTHETIC_BRANCH, commit_all, copy_project, dvc, load_params, set_key, write_params


class Reproduced(NamedTuple):
    path: Path  # the template project: clone it (wdlab.workspace.clone_project), never use or change it in place
    output: str  # stdout of its `dvc repro` of the SYNTHETIC_BRANCH


def reproduce_synthetic(dest: Path) -> Reproduced:
    """The synthetic branch reproduced at the committed params in a fresh git + DVC repo at `dest`.

    Two commits: the code first (so the MLflow runs carry `mlflow.source.git.commit`), then the outputs and
    dvc.lock (the baseline experiments start from).
    """
    project = copy_project(dest)
    commit_all(project, "code")
    repro = dvc(project, "repro", *SYNTHETIC_BRANCH)
    commit_all(project, "baseline λ = 0")
    return Reproduced(project, repro.stdout)


def headline(project: Path) -> dict:
    """The synthetic headline run's metrics, as the project's `headline_synthetic` last wrote them."""
    return json.loads((project / "metrics/synthetic_headline.json").read_text())["headline"]


def cifar_project(root: Path, overrides: Mapping[str, Any], *targets: str) -> tuple[Path, str]:
    """A fresh project (git + DVC) under `root` whose params take `overrides`, committed, then `dvc repro targets`
    with CIFAR-10 downloaded over HTTP from a generated stand-in archive served on 127.0.0.1: (project, its stdout)."""
    project = copy_project(root / "project")
    archive = build_archive(root / "serve", images_per_batch=60)
    params = set_key(load_params(), "images", ["cifar10"])  # the CIFAR-10 study alone, unless `overrides` say more
    for key, value in overrides.items():
        set_key(params, key, value)
    with served(archive) as url:
        set_key(params, "cifar10.download", {"url": url, "md5": archive.md5})
        write_params(project / "params.yaml", params)
        commit_all(project, "tiny CIFAR-10 profile")
        return project, dvc(project, "repro", *targets).stdout
