"""Writing files so that a crash never leaves one half-written, and sample files by extension."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from nfcli.errors import NfcliError

SAMPLE_FORMATS = (".npy", ".csv", ".pt")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via a temporary file in the same folder, fsync it, then os.replace it into place.
    The file gets the permissions a plain open() would give it (0666 less the umask), not
    mkstemp's private 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_dir(path: str | Path) -> Path:
    """Create an output folder, or explain why it cannot be written."""
    path = Path(path)
    if os.path.exists(path) and not os.path.isdir(path):  # os.path: False, not raise, on EACCES
        raise NfcliError(
            f"The output folder {path} is an existing file, not a folder. Choose a folder with "
            "-o/--output (it is created if missing), or move the file away."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nfcli-probe-"):
            pass
    except OSError as e:
        raise NfcliError(
            f"Cannot write to the output folder {path}: {e.strerror or e}. "
            "Choose another folder with -o/--output, or fix its permissions."
        ) from None
    return path


def check_sample_path(path: str, force: bool = True) -> str:
    """The sample format named by a path's extension, or an error before any work is done;
    unless ``force``, an existing file is not replaced (a fit's samples.npy among them)."""
    if path == "-":
        return "-"
    suffix = Path(path).suffix.lower()
    if suffix not in SAMPLE_FORMATS:
        raise NfcliError(
            f"Cannot tell the format of {path!r} from its extension {suffix or '(none)'}. "
            f"Use one of {', '.join(SAMPLE_FORMATS)}, or - for CSV on standard output."
        )
    parent = Path(path).parent
    if not os.path.isdir(parent):  # os.path: False, not PermissionError, past a closed folder
        raise NfcliError(f"The folder of {path!r} does not exist; create it or choose another.")
    if os.path.isdir(path):
        raise NfcliError(
            f"{path!r} is a folder; give a file name in it instead, e.g. {path}/samples{suffix}."
        )
    if not force and os.path.exists(path):
        raise NfcliError(
            f"{path} already exists and would be replaced. Pass --force to overwrite it, or "
            "choose another file with -o."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NfcliError(
            f"Cannot write {path!r}: its folder {parent} is not writable. Choose another path, "
            "or fix the folder's permissions."
        )
    return suffix


def save_samples(samples: Tensor, path: str, names: Sequence[str]) -> None:
    """Samples to .npy, .csv (header: variable names) or .pt by extension; '-' is CSV on stdout."""
    if path == "-":
        _write_csv(sys.stdout, samples, names)
        sys.stdout.flush()
        return
    suffix = check_sample_path(path)
    data = samples.detach().cpu()
    if suffix == ".npy":
        atomic_write(path, lambda f: np.save(f, data.numpy()))
    elif suffix == ".pt":
        atomic_write(path, lambda f: torch.save(data, f))
    else:

        def write(f: IO[bytes]) -> None:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            _write_csv(text, data, names)
            text.flush()
            text.detach()

        atomic_write(path, write)


def _write_csv(out: IO[str], samples: Tensor, names: Sequence[str]) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(names)
    w.writerows([f"{v:.9g}" for v in row] for row in samples.detach().cpu().double().tolist())


def load_points(path: str | Path, dim: int, names: Sequence[str] | None = None) -> Tensor:
    """Points (N, dim) from a .npy file or a .csv file (an optional header row of names, which
    must then be ``names``, in that order, when they are given)."""
    path = Path(path)
    if not path.is_file():
        raise NfcliError(f"The points file {path} does not exist. Give a .npy or .csv file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            rows = list(csv.reader(path.read_text().splitlines()))
            if rows and rows[0] and not _is_number(rows[0][0]):
                header, rows = [h.strip() for h in rows[0]], rows[1:]  # variable names
                if names is not None and header != list(names):
                    raise NfcliError(
                        f"The header of {path} names the columns {', '.join(header)}, but the "
                        f"model's variables are {', '.join(names)}, in that order. Give the "
                        "columns in the model's order with its names (or no header)."
                    )
            data = np.array([[float(v) for v in row] for row in rows if row], dtype=np.float64)
        else:
            raise NfcliError(f"Cannot read points from {path}: use a .npy or .csv file.")
    except (ValueError, OSError) as e:
        raise NfcliError(f"Cannot read points from {path}: {e}.") from None
    if data.ndim == 1 and dim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[1] != dim or not np.issubdtype(data.dtype, np.number):
        raise NfcliError(
            f"{path} holds an array of shape {data.shape}, but the model's dimension is {dim}: "
            f"give one point per row and {dim} columns."
        )
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float64))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
