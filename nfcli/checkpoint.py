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

Format 3 is a conditional fit, q(z | c) for a family of targets (``nfcli fit --condition``):

    {
      "format": "nfcli-checkpoint", "format_version": 3, "kind": "conditional",
      "conditional_flow": {...},          # ConditionalFlow.spec(): dim, architecture, lo, hi, …
      "state_dict": {name: tensor},       # ConditionalFlow.state_dict()
      "config": {...}, "per_step": int,   # the FitConfig, and the conditions drawn per step
      "energy": {...},                    # the energy over (z, c): vars are z's names, then c's
      "conditions": [{"name", "lo", "hi"}, ...],
      "history": {"loss": tensor, "loss_beta1": tensor},
      "metrics": {...},                   # ConditionalReport.to_dict(): what metrics.json holds
      "versions": {...},
      "training": {...},                  # nfcli.train_conditional.ConditionalTrainingState
    }

Format 4 is a VAE with a flow posterior (``nfcli vae``, ``nfcli.vae``):

    {
      "format": "nfcli-checkpoint", "format_version": 4, "kind": "vae",
      "spec": {...},                      # VaeSpec.to_dict(): pixels, latent, hidden, flow, K
      "state_dict": {name: tensor},       # VAE.state_dict(): encoder and decoder
      "config": {...},                    # VaeConfig.to_dict()
      "data": {"name", "source", "shape", "binary"},   # what it was trained on
      "history": {...},                   # VaeHistory.to_dict(): per epoch
      "evaluation": {...} or None,        # VaeEvaluation.to_dict(): the test −ln p(x)
      "versions": {...},
      "training": {...},                  # nfcli.vae.train.VaeTrainingState
    }

``training`` is what ``nfcli fit --resume`` needs to go on with a conditional fit; a format-3
file without it (from before it was stored) loads, but cannot be resumed. The flow is rebuilt in
the config's dtype.

Unconditional fits are still written as format 2, which older nfcli reads; an older nfcli
given a format-3 file says it is newer than it reads. ``load_any`` reads either kind;
``load_checkpoint`` and ``load_conditional_checkpoint`` each refuse the other kind in one
paragraph that says what to do.
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
from nfcli.conditional import ConditionalFlow
from nfcli.conditional_metrics import ConditionalReport
from nfcli.conditions import Condition
from nfcli.config import FitConfig
from nfcli.devices import resolve_dtype
from nfcli.energy import check_source
from nfcli.errors import NfcliError
from nfcli.flows import Flow
from nfcli.io import atomic_write
from nfcli.report import TrustReport
from nfcli.train import TrainingState
from nfcli.train_conditional import ConditionalTrainingState
from nfcli.vae.model import VAE, VaeSpec
from nfcli.vae.train import VaeConfig, VaeEvaluation, VaeHistory, VaeTrainingState

FORMAT = "nfcli-checkpoint"
FORMAT_VERSION = 2  # what an unconditional fit is written as
CONDITIONAL_FORMAT_VERSION = 3  # a conditional fit
VAE_FORMAT_VERSION = 4  # a VAE (the newest format this nfcli reads)


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


@dataclass
class ConditionalCheckpoint:
    """A conditional fit: q(z | c) (``flow``), what it was fitted with and to, and its report.
    ``energy_source`` is the energy over (z, c), its vars z's names and then the conditions'."""

    flow: ConditionalFlow
    config: FitConfig
    per_step: int
    energy_source: dict[str, Any]
    conditions: list[Condition]
    history: dict[str, Tensor]
    report: ConditionalReport  # saved as its to_dict(), under "metrics"
    versions: dict[str, str]
    training: ConditionalTrainingState | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """z's variable names (the conditions' are not sampled)."""
        return tuple(self.energy_source["vars"][: self.flow.dim])

    def describe_conditions(self) -> str:
        """'theta in [-3.14159, 3.14159]' for each condition, for messages."""
        return ", ".join(f"{c.name} in [{c.lo:g}, {c.hi:g}]" for c in self.conditions)


@dataclass
class VaeCheckpoint:
    """A trained VAE (``nfcli vae``): the model, how it was trained and on what, its learning
    curves, its test evaluation (None until evaluated) and where training stands."""

    model: VAE
    config: VaeConfig
    data: dict[str, Any]  # name, source, shape, binary
    history: VaeHistory
    evaluation: VaeEvaluation | None
    versions: dict[str, str]
    training: VaeTrainingState | None = None


def save_vae_checkpoint(path: str | Path, ckpt: VaeCheckpoint) -> None:
    _write(
        path,
        {
            "format": FORMAT,
            "format_version": VAE_FORMAT_VERSION,
            "kind": "vae",
            "spec": ckpt.model.spec.to_dict(),
            "state_dict": _cpu(ckpt.model.state_dict()),
            "config": ckpt.config.to_dict(),
            "data": dict(ckpt.data),
            "history": ckpt.history.to_dict(),
            "evaluation": ckpt.evaluation.to_dict() if ckpt.evaluation is not None else None,
            "versions": dict(ckpt.versions),
        },
        ckpt.training,
    )


def load_vae_checkpoint(path: str | Path) -> VaeCheckpoint:
    """Load and check a VAE's checkpoint; a flow fit's file is refused in one paragraph."""
    data = _read(path)
    if data.get("kind") != "vae":
        raise NfcliError(
            f"{path} is a flow fitted by nfcli fit, not a VAE trained by nfcli vae. Give the "
            "model.pt that nfcli vae wrote (e.g. runs/vae-k10/model.pt)."
        )
    try:
        model = VAE(VaeSpec.from_dict(data["spec"]))
        model.load_state_dict(data["state_dict"])
        evaluation = data.get("evaluation")
        training = data.get("training")
        return VaeCheckpoint(
            model.eval(),
            VaeConfig.from_dict(data["config"]),
            dict(data["data"]),
            VaeHistory.from_dict(data["history"]),
            VaeEvaluation.from_dict(evaluation) if evaluation is not None else None,
            data["versions"],
            VaeTrainingState.from_dict(training) if training is not None else None,
        )
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, NfcliError) as e:
        raise NfcliError(
            f"{path} is an nfcli VAE checkpoint with missing or inconsistent contents ({e}). "
            "Train it again with nfcli vae."
        ) from None


def versions() -> dict[str, str]:
    return {
        "nfcli": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "sympy": str(sympy.__version__),
    }


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    _write(
        path,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": ckpt.flow.architecture,
            "state_dict": _cpu(ckpt.flow.state_dict()),
            "dim": ckpt.flow.dim,
            "config": ckpt.config.to_dict(),
            "energy": dict(ckpt.energy_source),
            "history": _cpu(ckpt.history),
            "metrics": ckpt.report.to_dict(),
            "versions": dict(ckpt.versions),
        },
        ckpt.training,
    )


def save_conditional_checkpoint(path: str | Path, ckpt: ConditionalCheckpoint) -> None:
    _write(
        path,
        {
            "format": FORMAT,
            "format_version": CONDITIONAL_FORMAT_VERSION,
            "kind": "conditional",
            "conditional_flow": ckpt.flow.spec(),
            "state_dict": _cpu(ckpt.flow.state_dict()),
            "config": ckpt.config.to_dict(),
            "per_step": int(ckpt.per_step),
            "energy": dict(ckpt.energy_source),
            "conditions": [{"name": c.name, "lo": c.lo, "hi": c.hi} for c in ckpt.conditions],
            "history": _cpu(ckpt.history),
            "metrics": ckpt.report.to_dict(),
            "versions": dict(ckpt.versions),
        },
        ckpt.training,
    )


def _cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


def _write(path: str | Path, data: dict[str, Any], training: Any) -> None:
    """``data`` (and the training state, where there is one) to ``path``, atomically."""
    if training is not None:
        data["training"] = training.to_dict()
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and check an (unconditional) checkpoint; every way it can be wrong, a conditional
    fit's file included, is a one-paragraph NfcliError."""
    ckpt = load_any(path)
    if isinstance(ckpt, ConditionalCheckpoint):
        example = _example_at(ckpt.conditions)
        raise NfcliError(
            f"{path} is a conditional fit, q(z | {', '.join(c.name for c in ckpt.conditions)}) "
            f"over {ckpt.describe_conditions()}, and this command works on a fit to one target "
            "only. sample, logprob, plot and report take a conditional model with --at (e.g. "
            f"--at {example}); for anything else, fit the target at one condition (bind it as "
            f"a constant, e.g. nfcli fit EXPR {example})."
        )
    return ckpt


def load_conditional_checkpoint(path: str | Path) -> ConditionalCheckpoint:
    """Load and check a conditional fit's checkpoint; an unconditional one is refused."""
    ckpt = load_any(path)
    if not isinstance(ckpt, ConditionalCheckpoint):
        raise NfcliError(
            f"{path} is a fit to one target, not a conditional fit (nfcli fit --condition), so it "
            "has no conditions to set. Drop --at, or give the model.pt of a conditional fit."
        )
    return ckpt


def _example_at(conditions: list[Condition]) -> str:
    return ",".join(f"{c.name}={(c.lo + c.hi) / 2:.3g}" for c in conditions)


def load_any(path: str | Path) -> Checkpoint | ConditionalCheckpoint:
    """Load and check a checkpoint of either kind (its ``kind`` says which); every way it can
    be wrong is a one-paragraph NfcliError."""
    data = _read(path)
    path = Path(path)
    version = data["format_version"]
    if data.get("kind") == "vae":
        raise NfcliError(
            f"{path} is a VAE trained by nfcli vae, not a flow fitted to a target. Evaluate it "
            "with nfcli vae-eval (nfcli vae --resume goes on training it)."
        )
    if data.get("kind", "flow") == "conditional":
        return _conditional_from_data(path, data)
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


def _read(path: str | Path) -> dict[str, Any]:
    """A checkpoint file's dict, loaded with weights_only and checked to be an nfcli checkpoint of
    a format this nfcli reads; every way it can be wrong is a one-paragraph NfcliError."""
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
    if not isinstance(version, int) or version > VAE_FORMAT_VERSION:
        raise NfcliError(
            f"{path} has checkpoint format version {version}, newer than this nfcli reads "
            f"({VAE_FORMAT_VERSION}). Upgrade nfcli (pip install -U nfcli)."
        )
    return data


def _conditional_from_data(path: Path, data: dict[str, Any]) -> ConditionalCheckpoint:
    try:
        check_source(data.get("energy"))
        config = stored_config(data["config"])
        conditions = [
            Condition(c["name"], float(c["lo"]), float(c["hi"])) for c in data["conditions"]
        ]
        flow = ConditionalFlow.from_spec(data["conditional_flow"])
        flow = flow.to(resolve_dtype(config.dtype))
        flow.load_state_dict(data["state_dict"])
        training = data.get("training")
        return ConditionalCheckpoint(
            flow.eval(),
            config,
            int(data["per_step"]),
            data["energy"],
            conditions,
            data["history"],
            ConditionalReport.from_dict(data["metrics"]),
            data["versions"],
            ConditionalTrainingState.from_dict(training) if training is not None else None,
        )
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, NfcliError) as e:
        raise NfcliError(
            f"{path} is an nfcli conditional checkpoint with missing or inconsistent contents "
            f"({e}). Re-run nfcli fit --condition to make a new one."
        ) from None


# what a checkpoint's config meant when it lacked a field: the only behaviour nfcli then had
_BEFORE_FIELDS = {
    "flow": "planar",
    "start": "origin",
    "converge": False,
    "compile_energy": "off",
    "compile_flow": "off",
}


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
