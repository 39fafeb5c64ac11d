"""CIFAR-10 training throughput (images/s): this project's tensor trainer against a typical tutorial loop.

Both train the same net (cifar10.model.width) with the same batch size on random uint8 images of
CIFAR shape, which cost exactly what real images cost:

  tutorial   a Dataset yielding PIL images, transforms.Compose([RandomCrop(32, padding=4),
             RandomHorizontalFlip(), ToTensor(), Normalize]), a shuffling DataLoader; float32, NCHW
  tutorial+  the same data pipeline feeding this trainer's device formats (bf16 autocast, channels_last
             where they apply), to separate the data pipeline's share from the formats' share
  trainer    wdlab.cifar10.training.Trainer.train_epoch: the dataset as one uint8 tensor on the device, flips and
             crops as batched tensor ops, the same device formats

and the trainer's achieved GFLOP/s (FLOPs of one step as FlopCounterMode counts them: convolutions and matmuls,
forward and backward) beside what this machine reaches at best, timed in the same run: a large matmul and a
32-channel 3×3 convolution in the trainer's precision and layout. It prints the machine first (benchmarks/machine.py)
and writes every figure with it to benchmarks/results/cifar_throughput-<machine class>.json.

    python -m benchmarks.cifar_throughput                 # params.yaml's width and batch size
    python -m benchmarks.cifar_throughput --images 5120 --workers 0
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python -m benchmarks.cifar_throughput   # as a CPU without bf16 computes (float32)
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from benchmarks.machine import this_machine, write_result
from wdlab import streams
from wdlab.cifar10.data import MEAN, STD, Split
from wdlab.cifar10.model import build_model
from wdlab.cifar10.training import Trainer, make_optimizer
from wdlab.device import Formats, device_formats, pick_device
from wdlab.settings import load_settings


class ArrayCIFAR(Dataset):
    """torchvision's CIFAR10 without its md5 checks: HWC uint8 arrays, one PIL image per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def tutorial_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, workers: int) -> DataLoader:
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = ArrayCIFAR(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), augment)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )


def tutorial_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, formats: Formats
) -> None:
    model.train()
    for images, labels in loader:
        images = images.to(formats.device).contiguous(memory_format=formats.memory_format)
        with formats.autocast():
            loss = F.cross_entropy(model(images).float(), labels.to(formats.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure(epochs: dict[str, Callable[[], None]], n_images: int, repeats: int) -> dict[str, float]:
    """Images per second of each loop: the best of `repeats` epochs after a warm-up one, the loops taking turns
    so that a busy spell on a shared machine slows all of them alike."""
    for epoch in epochs.values():
        epoch()
    best = dict.fromkeys(epochs, float("inf"))
    for _ in range(repeats):
        for name, epoch in epochs.items():
            start = time.perf_counter()
            epoch()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: n_images / seconds for name, seconds in best.items()}


def flops_per_image(trainer: Trainer, batch: Split) -> float:
    """FLOPs of one training step on `batch`, per image (this step does train `trainer`)."""
    with FlopCounterMode(display=False) as counter:
        trainer.train_epoch(batch)
    return counter.get_total_flops() / len(batch.labels)


def peak_gflops(formats: Formats, repeats: int) -> dict[str, float]:
    """GFLOP/s of the two kernels that bound the trainer's arithmetic, in its precision and layout."""
    dtype, device = formats.autocast_dtype or torch.float32, formats.device
    a, b = (torch.randn(4096, 4096, dtype=dtype, device=device) for _ in range(2))
    x = torch.randn(256, 32, 32, 32, dtype=dtype, device=device).contiguous(memory_format=formats.memory_format)
    w = torch.randn(32, 32, 3, 3, dtype=dtype, device=device).contiguous(memory_format=formats.memory_format)
    return {
        f"4096² {dtype_name(dtype)} matmul": gflops(lambda: a @ b, repeats),
        f"32-channel 3×3 {dtype_name(dtype)} conv": gflops(lambda: F.conv2d(x, w, padding=1), repeats),
    }


def gflops(kernel: Callable[[], torch.Tensor], repeats: int) -> float:
    """FLOPs counted on one call over the best of `repeats` timed calls (after a warm-up one)."""
    with FlopCounterMode(display=False) as counter:
        kernel()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        kernel()
        sync()
        best = min(best, time.perf_counter() - start)
    return counter.get_total_flops() / best / 1e9


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--images", type=int, default=2560, help="images per timed epoch (default 2560)")
    cli.add_argument("--repeats", type=int, default=3, help="timed epochs per loop; the best counts")
    cli.add_argument("--workers", type=int, default=2, help="DataLoader workers of the tutorial loop (its usual 2)")
    cli.add_argument("--params", default="params.yaml")
    args = cli.parse_args()

    settings = load_settings(args.params)
    study = settings.cifar10
    # Both loops augment (flip + crop), whatever cifar10.data.augment says: that is the work being compared.
    spec = study.model_copy(
        update={
            "data": study.data.model_copy(update={"augment": True}),
            "train": study.train.model_copy(update={"epochs": 1}),
        }
    )
    device = pick_device(settings.device)
    fast = device_formats(device, study.train.mixed_precision)
    plain = Formats(device, torch.contiguous_format, None)
    seed = study.seeds[0]
    gen = streams.generator(seed, 0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    n = (args.images // study.train.batch_size) * study.train.batch_size  # both loops drop the last partial batch
    machine = this_machine()
    print(machine.describe())
    print(
        f"device {device} ({torch.get_num_threads()} threads), width {study.model.width}, "
        f"batch {study.train.batch_size}, "
        f"{n} images per epoch, trainer formats: {fast.describe()}"
    )

    def fresh(formats: Formats) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(study.model.width, seed).to(device, memory_format=formats.memory_format)
        return model, make_optimizer(model, study.train, study.regularizer, study.wd)

    loader = tutorial_loader(images, labels, study.train.batch_size, args.workers)
    tutorial, tutorial_plus = fresh(plain), fresh(fast)
    trainer = Trainer.create(spec, study.regularizer, study.wd, seed, fast, n_train=n)
    split = Split(images, labels).to(device)
    results = measure(
        {
            "tutorial": lambda: tutorial_epoch(*tutorial, loader, plain),
            "tutorial+": lambda: tutorial_epoch(*tutorial_plus, loader, fast),
            "trainer": lambda: trainer.train_epoch(split),
        },
        n,
        args.repeats,
    )
    for name, rate in results.items():
        print(f"{name:<10} {rate:8.0f} images/s")
    print(f"trainer / tutorial  = {results['trainer'] / results['tutorial']:.2f}×")
    print(f"trainer / tutorial+ = {results['trainer'] / results['tutorial+']:.2f}×  (data pipeline alone)")

    batch = Split(images[: study.train.batch_size], labels[: study.train.batch_size]).to(device)
    per_image = flops_per_image(
        Trainer.create(spec, study.regularizer, study.wd, seed, fast, n_train=len(batch.labels)), batch
    )
    achieved = results["trainer"] * per_image / 1e9
    print(f"trainer    {per_image / 1e9:.3f} GFLOP per image (forward + backward) = {achieved:.0f} GFLOP/s")
    peaks = peak_gflops(fast, repeats=5 * args.repeats)
    for name, peak in peaks.items():
        print(f"  {100 * achieved / peak:4.0f} % of a {name:<28} {peak:6.0f} GFLOP/s")
    figures = {
        "width": study.model.width,
        "batch_size": study.train.batch_size,
        "images_per_epoch": n,
        "formats": fast.describe(),
        "images_per_s": {name: round(rate) for name, rate in results.items()},
        "gflop_per_image": round(per_image / 1e9, 4),
        "trainer_gflop_per_s": round(achieved, 1),
        "peak_gflop_per_s": {name: round(peak, 1) for name, peak in peaks.items()},
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(f"written: {write_result('cifar_throughput', machine, figures)}")


if __name__ == "__main__":
    main()
