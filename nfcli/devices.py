"""Where and in what precision a flow runs: ``--device cpu|cuda|auto`` and ``--dtype``.

Fitting runs on the chosen device; checkpoints are always written from CPU tensors, so they load on
any machine, and ``load_checkpoint(...).flow.to(device)`` moves a flow wherever it is needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

from nfcli.errors import NfcliError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' (or 'cuda:N') or 'auto' (CUDA when torch sees a GPU, else CPU)."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise NfcliError(
                f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                f"built {'with' if torch.backends.cuda.is_built() else 'without'} CUDA). Use "
                "--device cpu, or --device auto to take a GPU only when there is one."
            )
        try:
            device = torch.device(name)
        except RuntimeError:
            device = None
        if device is None or (device.index or 0) >= torch.cuda.device_count():
            raise NfcliError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices, numbered "
                "from 0; use e.g. --device cuda:0."
            )
        return device
    raise NfcliError(f"--device {name!r} is not a device; choose one of {', '.join(DEVICES)}.")


def resolve_dtype(name: str) -> torch.dtype:
    """'float32' (the default: fast, and accurate enough to fit) or 'float64'."""
    if name not in DTYPES:
        raise NfcliError(
            f"--dtype {name!r} is not supported; choose one of {', '.join(DTYPES)} "
            "(float64 is slower and rarely needed to fit; the diagnostics use float64 anyway)."
        )
    return DTYPES[name]


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded random generator on ``device`` (draws on CUDA differ from CPU for one seed)."""
    return torch.Generator(device=device).manual_seed(seed)


@functools.cache
def reuse_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 1 GiB for reuse instead of handing each one back to
    the kernel. A training step allocates and frees the same large buffers (K + 1 copies of the
    batch); by default glibc maps every block over 32 MiB afresh, and the page faults of that
    made a step at D = 1024 cost 3.6× what it costs with the blocks reused (138 ms against 38 ms,
    measured). Process-wide, done once, and only where glibc's mallopt exists."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
