"""The checkpoint format: one ``torch.save`` file of plain types, loaded with weights_only=True.

    {
      "format": "nfcli-checkpoint", "format_version": 2,
      "architecture": {"base": {...}, "transforms": [{...}, ...]},   # what Flow is built from
      "state_dict": {name: tensor},       # the flow's parameters and buffers (Flow.state_dict())
      "dim": int,
      "config": {...},                     # the FitConfig, as a dict of plain values
      "energy": {"kind", "text", "path", "name", "vars"},   # see nfcli.energy.Energy.source
      "history": {"loss": tensor, "loss_beta1": tensor},    # per step: F_β and F at β = 1
      "metrics": {...},                    # what metrics.json holds
      "versions": {"nfcli", "torch", "python", "sympy"},    # as strings
      "training": {...},                   # where the fit stands: nfcli.train.TrainingState
    }

Nothing in it is a pickled object, so loading it cannot run code; ``sample`` needs only this file.
``training`` (optimizer moments, step, random state, loss histories per restart) is what
``nfcli fit --resume`` needs to go on exactly; files without it load, but cannot be resumed.

Format 1 (nfcli before the transform design) had no "architecture": its flow is the planar or
radial stack that its config describes, and its parameter names lack the transform's index
("layers.u" is now "transforms.0.u"); ``load_checkpoint`` reads it as format 2.
"""

from __future__ import annotations

import io
import pickle
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sympy
import torch
from torch import Tensor

from nfcli import __version__
from nfcli.config import FitConfig
from nfcli.devices import resolve_dtype
from nfcli.energy import check_source
from nfcli.errors import NfcliError
from nfcli.flows import Flow
from nfcli.io import atomic_write
from nfcli.report import TrustReport
from nfcli.train import TrainingState

FORMAT = "nfcli-checkpoint"
FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    flow: Flow
    config: FitConfig
    energy_source: dict[str, Any]
    history: dict[str, Tensor]
    report: TrustReport  # saved as its to_dict(), under "metrics"
    versions: dict[str, str]
    training: TrainingState | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.energy_source["vars"])


def versions() -> dict[str, str]:
    return {
        "nfcli": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "sympy": str(sympy.__version__),
    }


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ckpt.flow.architecture,
        "state_dict": {k: v.detach().cpu().clone() for k, v in ckpt.flow.state_dict().items()},
        "dim": ckpt.flow.dim,
        "config": ckpt.config.to_dict(),
        "energy": dict(ckpt.energy_source),
        "history": {k: v.detach().cpu().clone() for k, v in ckpt.history.items()},
        "metrics": ckpt.report.to_dict(),
        "versions": dict(ckpt.versions),
    }
    if ckpt.training is not None:
        data["training"] = ckpt.training.to_dict()
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and check a checkpoint; every way it can be wrong is a one-paragraph NfcliError."""
    path = Path(path)
    if not path.is_file():
        raise NfcliError(
            f"The checkpoint {path} does not exist. Give the model.pt written by nfcli fit "
            "(e.g. runs/u1/model.pt)."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses both a pickle that names a callable ("Unsupported global") and
        # bytes it cannot parse; only the first is a file carrying code
        code = [line for line in str(e).splitlines() if "Unsupported global" in line]
        if not code:
            raise NfcliError(
                f"{path} is not a readable nfcli checkpoint (truncated, corrupted or another "
                "kind of file). Re-run nfcli fit to make a new one."
            ) from None
        raise NfcliError(
            f"{path} was refused: it holds Python objects that loading would have to run "
            f"({code[0].strip()[:200]}). nfcli checkpoints contain only tensors and plain "
            "values; do not load this file with anything that runs pickles."
        ) from None
    except Exception as e:  # torch raises many types for a foreign file
        raise NfcliError(
            f"{path} is not a readable nfcli checkpoint (truncated, corrupted or another kind "
            f"of file; torch raised {type(e).__name__}). Re-run nfcli fit to make a new one."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NfcliError(
            f"{path} is a torch file but not an nfcli checkpoint. Give the model.pt that nfcli "
            "fit wrote."
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise NfcliError(
            f"{path} has checkpoint format version {version}, newer than this nfcli reads "
            f"({FORMAT_VERSION}). Upgrade nfcli (pip install -U nfcli)."
        )
    try:
        check_source(data.get("energy"))
        config = stored_config(data["config"])
        if version == 1:
            data = upgrade_format_1(data)
        flow = Flow(data["dim"], data["architecture"]).to(resolve_dtype(config.dtype))
        flow.load_state_dict(data["state_dict"])
        return Checkpoint(
            flow.eval(),
            config,
            data["energy"],
            data["history"],
            TrustReport.from_dict(data["metrics"]),
            data["versions"],
            TrainingState.from_dict(data["training"]) if "training" in data else None,
        )
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, NfcliError) as e:
        raise NfcliError(
            f"{path} is an nfcli checkpoint with missing or inconsistent contents ({e}). "
            "Re-run nfcli fit to make a new one."
        ) from None


# what a checkpoint's config meant when it lacked a field: the only behaviour nfcli then had
_BEFORE_FIELDS = {"flow": "planar", "start": "origin", "converge": False}


def stored_config(values: dict[str, Any]) -> FitConfig:
    """The FitConfig a checkpoint's config dict describes, from any nfcli version: a field that
    version did not have takes the value that reproduces what it did (``_BEFORE_FIELDS``), not
    today's default (an older 10-D fit started at the origin, whatever ``auto`` means now)."""
    known = set(FitConfig.field_names())
    given = {k: v for k, v in values.items() if k in known}
    return FitConfig(**{**_BEFORE_FIELDS, **given})


def upgrade_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint as format 2: the architecture its config implies (a planar or radial
    stack), and its parameter names ("layers.u") moved to the stack's ("transforms.0.u"), in the
    flow and in the training state that --resume reads."""
    config = stored_config(data["config"])

    def rename(state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            ("transforms.0." + k.removeprefix("layers.") if k.startswith("layers.") else k): v
            for k, v in state.items()
        }

    data = dict(data, architecture=config.architecture(), format_version=2)
    data["state_dict"] = rename(data["state_dict"])
    if "training" in data:
        data["training"] = dict(data["training"], flow=rename(data["training"]["flow"]))
    return data
