"""Serving the chosen CIFAR-10 model as docs/mlflow.md says: `mlflow models serve` answers uint8 images with the
logits the model gives in-process, and refuses images of another layout in one line.

The model is the real one: the training stage's l2 grid (one strength, one seed, one epoch of a width-8 net on a
stand-in archive), logged by evaluate_images's own `log_chosen_model` to a store in a temp folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import mlflow
import numpy as np
import pytest
import torch

from stages import evaluate_images, train_images
from tests.helpers.stages import stage_args
from wdlab.cifar10.archive import read_archive, save_cifar10
from wdlab.cifar10.standin import build_archive
from wdlab.settings import parse_settings
from wdlab.workspace import background, free_port, kill_group, load_params, set_key

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
START_SECONDS = 120  # `mlflow models serve` imports MLflow and torch twice (its CLI, then the uvicorn worker)
STRENGTH = 5e-4


class Logged(NamedTuple):
    project: Path
    store: str  # the tracking URI a `models:/` URI resolves against
    model_uri: str


@pytest.fixture(scope="module")
def chosen(tmp_path_factory) -> Logged:
    """train_images@l2 at one strength, then evaluate_images's `log_chosen_model` picking it: the model's URI, which
    the grid's run (found from models/cifar10/chosen_model.json) gives as `runs:/<run id>/model`."""
    root = tmp_path_factory.mktemp("serving")
    archive = build_archive(root / "archive", images_per_batch=60)
    params = load_params()
    for key, value in {
        "cifar10.seeds": [0],
        "cifar10.wd": STRENGTH,
        "cifar10.strengths.l2": [STRENGTH],
        "cifar10.data": {"split_seed": 0, "train_subset": 0, "valid_size": 50, "curve_subset": 0, "augment": False},
        "cifar10.model.width": 8,
        "cifar10.train.epochs": 1,
        "cifar10.train.batch_size": 32,
        "cifar10.train.mixed_precision": False,
        "cifar10.download.md5": archive.md5,
    }.items():
        set_key(params, key, value)
    settings = parse_settings(params)
    grid = train_images.parser().parse_args(stage_args("train_images@cifar10-l2"))
    evaluated = evaluate_images.parser().parse_args(stage_args("evaluate_images@cifar10"))
    store = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", store)
        save_cifar10(read_archive(archive.path), grid.data, source_md5=archive.md5)
        train_images.main(settings, grid)
        checkpoint = evaluate_images.read_grid(evaluated, "l2")
        record, uri = evaluate_images.log_chosen_model(settings, evaluated, STRENGTH, checkpoint)
    assert uri, record
    return Logged(root, store, uri)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for_ping(server: subprocess.Popen, base: str) -> None:
    """Until GET /ping answers 200; a server that exits or never answers fails the test with its output."""
    deadline = time.monotonic() + START_SECONDS
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    kill_group(server, grace=2)
    pytest.fail(f"`mlflow models serve` never answered {base}/ping:\n{server.stdout.read()[-3000:]}")


@pytest.fixture(scope="module")
def served(chosen) -> str:
    """docs/mlflow.md's `mlflow models serve -m <model_uri> --env-manager local --host 127.0.0.1 --port …`, stopped
    (its whole process group) when the module's tests end, passed or failed."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", chosen.model_uri,
        "--env-manager", "local", "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    with background(command, cwd=chosen.project, MLFLOW_TRACKING_URI=chosen.store) as server:
        base = f"http://{HOST}:{port}"
        wait_for_ping(server, base)
        yield base


def test_the_served_model_answers_a_uint8_image_with_the_logits_it_gives_in_process(chosen, served):
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    status, answer = post(f"{served}/invocations", {"inputs": image.tolist()})
    assert status == 200, answer
    logits = np.asarray(answer["predictions"])
    assert logits.shape == (1, 10)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", chosen.store)
        in_process = mlflow.pyfunc.load_model(chosen.model_uri).predict(image.numpy())
    np.testing.assert_allclose(logits, in_process, rtol=1e-6, atol=1e-6)
    assert np.isfinite(logits).all() and logits.std() > 0


def test_images_in_another_layout_are_refused_with_the_expected_shape(served):
    channels_last = np.zeros((1, 32, 32, 3), np.uint8)
    status, answer = post(f"{served}/invocations", {"inputs": channels_last.tolist()})
    assert status == 400, answer
    assert "(-1, 3, 32, 32)" in answer["message"], answer["message"]
