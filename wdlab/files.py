"""Atomic file outputs and checked inputs: a killed stage never leaves a half-written file."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from wdlab.errors import StageInputError

if TYPE_CHECKING:
    import pandas as pd


def project_root() -> Path:
    """The repository the user works in, also under `dvc exp run --queue` (which runs in a temp copy)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temp directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RunFolder(NamedTuple):
    """The outputs of one training stage, one folder per grid (or headline run): what downstream stages take."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model.pt"  # trained weights

    @property
    def record(self) -> Path:
        return self.root / "run.json"  # how it ran, and what finds its MLflow run (no run id: tracking.run_record)

    @property
    def history(self) -> Path:
        return self.root / "history.csv"  # per-epoch metrics, long format

    @property
    def layer_norms(self) -> Path:
        return self.root / "layer_norms.csv"  # CIFAR-10: ‖W‖ per (strength, seed, epoch, layer)


def grid_folders(root: Path | str, names: Sequence[str]) -> dict[str, RunFolder]:
    """Each regulariser's grid folder under `root` (a training stage per regulariser writes `root/<name>`)."""
    return {name: RunFolder(Path(root) / name) for name in names}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=True, ensure_ascii=False) + "\n")


def write_csv(path: Path | str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def save_tensors(path: Path | str, tensors: dict[str, Any]) -> str:
    """torch.save, byte-identical for identical tensors (saving to a file would name the zip's folder after it); returns
    the file's md5, the hash DVC records for it (and `md5sum` prints)."""
    import torch  # here, not at the top: stages that write no tensors should not pay torch's import

    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return hashlib.md5(buffer.getvalue()).hexdigest()


def _fix(made_by: str) -> str:
    return f"run `dvc repro {made_by}` to make it again"


def _existing(path: Path | str, made_by: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"{path} is missing: {_fix(made_by)}")
    return path


def load_tensors(path: Path | str, made_by: str, required: Sequence[str] = ()) -> dict[str, Any]:
    """Load a torch file written by stage `made_by`, naming file and stage when it is unusable."""
    import torch

    path = _existing(path, made_by)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a truncated or foreign file
        raise StageInputError(f"{path} is unreadable ({type(err).__name__}): {_fix(made_by)}") from None
    _require(path, made_by, required, data)
    return data


def read_table(path: Path | str, made_by: str, required: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV written by stage `made_by`, as a DataFrame with at least the `required` columns."""
    import pandas as pd

    path = _existing(path, made_by)
    try:
        table = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as err:
        raise StageInputError(f"{path} is unreadable ({type(err).__name__}): {_fix(made_by)}") from None
    _require(path, made_by, required, table.columns)
    return table


def read_json(path: Path | str, made_by: str = "", *, fix: str | None = None, required: Sequence[str] = ()) -> Any:
    """A JSON file written by stage `made_by` (or made as `fix` says, for a file no stage makes), an object with at
    least the `required` keys if any are named."""
    fix = fix or _fix(made_by)
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"{path} is missing: {fix}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise StageInputError(f"{path} is not valid JSON: {fix}") from None
    if required and not isinstance(data, dict):
        raise StageInputError(f"{path} is not a JSON object: {fix}")
    missing = [key for key in required if key not in data]
    if missing:
        raise StageInputError(f"{path} lacks {', '.join(missing)}: {fix}")
    return data


def _require(path: Path, made_by: str, required: Sequence[str], present: Any) -> None:
    missing = [key for key in required if key not in present]
    if missing:
        raise StageInputError(f"{path} lacks {', '.join(missing)}: {_fix(made_by)}")
