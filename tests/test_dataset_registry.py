"""The dataset registry: each dataset one definition that the fetch command, the reader, normalisation, the nets and
the serving wrapper read; a third dataset (scikit-learn's bundled 8×8 digits) is registered here, in the test alone,
and works through all of them without a change to the library."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sklearn
import torch

from wdlab.cifar10.model import ImageClassifier, PlainCNN, build_net, make_net
from wdlab.datasets import __main__ as datasets_cli
from wdlab.datasets import registry
from wdlab.datasets.cifar10 import CIFAR10
from wdlab.datasets.definition import Dataset, ImageSet, Resource, StandIn
from wdlab.datasets.fashion_mnist import FASHION_MNIST
from wdlab.datasets.sources import fetch
from wdlab.errors import StageError

# ── the third dataset, defined in this test only ─────────────────────────────────────────────────

DIGITS_FILE = "digits.csv"  # 1,797 rows: 64 pixel values in 0–16 (8×8, row-major), then the label
SKLEARN_DATA = Path(sklearn.__file__).parent / "datasets" / "data"  # holds digits.csv.gz
TRAIN_ROWS = 1500  # the first 1,500 rows train, the other 297 test


def read_digits(folder: Path) -> ImageSet:
    path = folder / DIGITS_FILE
    raw = path.read_bytes() if path.is_file() else gzip.decompress((folder / f"{DIGITS_FILE}.gz").read_bytes())
    table = np.loadtxt(raw.decode().splitlines(), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65 or table[:, :64].max() > 16 or table[:, 64].max() > 9:
        raise StageError(f"{path} is not scikit-learn's digits table: reinstall scikit-learn")
    images = torch.from_numpy(np.round(table[:, :64] * 255 / 16).astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, 64])
    return ImageSet(images[:TRAIN_ROWS], labels[:TRAIN_ROWS], images[TRAIN_ROWS:], labels[TRAIN_ROWS:], DIGITS.classes)


def build_digits_standin(directory: Path | str, rows: int = 40, seed: int = 0) -> StandIn:
    """A digits table of `rows` random images in the same CSV format, gzipped, and its declared checksum."""
    rng = np.random.default_rng(seed)
    table = np.column_stack([rng.integers(0, 17, (rows, 64)), np.arange(rows) % 10])
    text = "".join(",".join(map(str, row)) + "\n" for row in table).encode()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{DIGITS_FILE}.gz").write_bytes(gzip.compress(text, mtime=0))
    return StandIn(directory, (Resource(DIGITS_FILE, hashlib.md5(text).hexdigest(), len(text)),))


def digits_content() -> bytes:
    return gzip.decompress((SKLEARN_DATA / f"{DIGITS_FILE}.gz").read_bytes())


DIGITS = Dataset(
    name="digits",
    title="scikit-learn's 8×8 digits",
    classes=tuple(str(d) for d in range(10)),
    channels=1,
    side=8,
    mean=(0.3052,),  # over the 1,500 training images, checked below
    std=(0.3749,),
    resources=(Resource(DIGITS_FILE, hashlib.md5(digits_content()).hexdigest(), len(digits_content())),),
    mirrors=(str(SKLEARN_DATA),),
    read=read_digits,
    build_standin=build_digits_standin,
    install_hint="reinstall scikit-learn, which ships the table",
)


@pytest.fixture
def digits() -> Iterator[Dataset]:
    registry.register(DIGITS)
    yield DIGITS
    registry.REGISTRY.pop(DIGITS.name)


def test_a_third_dataset_is_one_definition(digits, tmp_path, capsys):
    """Registered, it is fetched by the command from its installed source, read, normalised, and fed to a net sized
    by its own shape; its stand-in goes through the same path."""
    datasets_cli.main(["list"])
    assert "digits: scikit-learn's 8×8 digits, 10 classes, images 1×8×8" in capsys.readouterr().out

    datasets_cli.main(["fetch", "digits", "--out", str(tmp_path / "digits")])  # the definition's mirror
    data = registry.get("digits").read(tmp_path / "digits")

    digits.check(data, "digits")
    assert data.train_images.shape == (1500, 1, 8, 8) and data.test_images.shape == (297, 1, 8, 8)
    assert digits.image_shape == (1, 8, 8) and digits.chance == pytest.approx(0.1)
    assert digits.serving_shape == [-1, 1, 8, 8]
    normalised = digits.normalise(data.train_images)
    assert normalised.mean().item() == pytest.approx(0, abs=1e-3) and normalised.std().item() == pytest.approx(
        1, abs=1e-3
    )

    net = build_net({"width": 4} | digits.net_inputs(), seed=0).eval()
    served = ImageClassifier(net, digits.mean, digits.std).eval()
    with torch.no_grad():
        logits = served(data.test_images[:5])
        assert logits.shape == (5, len(digits.classes))
        assert torch.equal(logits, net(digits.normalise(data.test_images[:5])))  # the same preprocessing
    with pytest.raises(ValueError, match="at least 16 pixels a side, not 8"):
        make_net({"architecture": "plain", "channels": 4, "hidden": 8} | digits.net_inputs())

    standin = digits.build_standin(tmp_path / "standin", rows=30)
    small = digits.read(fetch(digits, tmp_path / "from-standin", [str(standin.folder)], standin.resources))
    assert small.train_images.shape == (30, 1, 8, 8) and small.test_images.shape == (0, 1, 8, 8)


def test_every_dataset_stand_in_reads_back_and_trains_a_net_of_its_shape(digits, tmp_path):
    """The registry's consumers take channels, side and classes from each definition; nothing assumes 3×32×32×10."""
    kwargs = {"fashion-mnist": {"train_images": 20, "test_images": 10}, "cifar10": {"images_per_batch": 4}}
    for dataset in registry.REGISTRY.values():
        standin = dataset.build_standin(tmp_path / dataset.name / "standin", **kwargs.get(dataset.name, {}))
        out = fetch(dataset, tmp_path / dataset.name / "out", [str(standin.folder)], standin.resources)
        data = dataset.check(dataset.read(out), dataset.name)
        for shape in ({"width": 4}, {"architecture": "plain", "channels": 4, "hidden": 8}):
            if shape.get("architecture") == "plain" and dataset.side < 16:
                continue
            net = build_net(shape | dataset.net_inputs(), seed=0)
            logits = net(dataset.normalise(data.train_images[:4]))
            assert logits.shape == (4, len(dataset.classes)), (dataset.name, shape)
            logits.sum().backward()


def test_digits_statistics_are_those_declared():
    data = read_digits(SKLEARN_DATA)
    pixels = data.train_images.double() / 255
    assert (pixels.mean().item(), pixels.std().item()) == pytest.approx((DIGITS.mean[0], DIGITS.std[0]), abs=1e-4)


def test_registered_datasets_and_their_shapes():
    assert set(registry.REGISTRY) == {"cifar10", "fashion-mnist"}
    assert CIFAR10.image_shape == (3, 32, 32) and CIFAR10.serving_shape == [-1, 3, 32, 32]
    assert FASHION_MNIST.image_shape == (1, 28, 28) and FASHION_MNIST.net_inputs() == {
        "in_channels": 1,
        "side": 28,
        "classes": 10,
    }
    assert FASHION_MNIST.mirrors[0] == "/usr/share/datasets/fashion-mnist", "Debian's copy before the internet"
    assert all(r.gzipped for r in FASHION_MNIST.resources) and not CIFAR10.resources[0].gzipped
    assert isinstance(make_net({"architecture": "plain", "channels": 4, "hidden": 8}), PlainCNN)


def test_cifar10_defaults_are_the_nets_of_before():
    """A checkpoint without the data's keys is a CIFAR-10 net: the same weights whether or not they are given."""
    for shape in ({"width": 4}, {"architecture": "plain", "channels": 4, "hidden": 8}):
        before = build_net(shape, seed=1).state_dict()
        explicit = build_net(shape | CIFAR10.net_inputs(), seed=1).state_dict()
        assert list(before) == list(explicit) and all(torch.equal(before[k], explicit[k]) for k in before)


def test_unknown_or_twice_defined_names_are_refused(digits):
    with pytest.raises(StageError, match="no dataset is called 'mnist': choose one of cifar10, digits, fashion-mnist"):
        registry.get("mnist")
    registry.register(DIGITS)  # the same definition again changes nothing
    with pytest.raises(ValueError, match="'digits' is registered already"):
        registry.register(Dataset(**{**DIGITS.__dict__, "side": 9}))
    with pytest.raises(ValueError, match="one value per channel"):
        Dataset(**{**DIGITS.__dict__, "mean": (0.1, 0.2, 0.3)})
