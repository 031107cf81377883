"""What a fit keeps to resume exactly (``fit``, ``fit_conditional``, ``fit_vae``): CPU copies of
tensors, torch's random state, and the round trip of a training-state dataclass through the plain
dict that a checkpoint stores (loaded with ``weights_only``)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Self

import torch
from torch import Tensor


def to_cpu(x: Any) -> Any:
    """``x`` with every tensor in it (through dicts, lists and tuples) detached, on the CPU, and
    copied."""
    if isinstance(x, Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_cpu(v) for v in x)
    return x


def get_rng(device: torch.device) -> dict[str, Tensor]:
    """torch's global random state: "cpu", and "cuda" for a fit on a GPU."""
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng(rng: dict[str, Tensor], device: torch.device) -> None:
    """Restore what ``get_rng`` returned."""
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


class PlainState:
    """A dataclass of training state stored in a checkpoint: ``to_dict`` gives plain types and CPU
    tensors only, ``from_dict`` reads them back (every field must be there)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: to_cpu(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(**{f.name: d[f.name] for f in fields(cls)})  # type: ignore[arg-type]
