"""What a fit is asked to do: ``FitConfig``, every knob with its default, and the rules that check
it (``validate``) and fill in what depends on the flow type. ``nfcli.train.fit`` runs it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from nfcli.devices import resolve_dtype
from nfcli.errors import NfcliError
from nfcli.flows import (
    COUPLING_TYPES,
    DEFAULT_BINS,
    DEFAULT_HIDDEN,
    DEFAULT_K,
    FLOW_TYPES,
    architecture,
)

ANNEAL_FRACTION = 0.375  # the measured defaults: 3000 of 8000 steps


@dataclass
class FitConfig:
    """Every knob of a fit. The defaults were chosen with ``benchmarks/sweep.py`` and are checked
    by ``benchmarks/quality.py`` (README, "Quality at defaults")."""

    K: int | None = None  # layers; None: the flow type's default (DEFAULT_K: 32 planar/radial)
    flow: str = "planar"
    iters: int = 8000
    batch: int = 1024  # per-step cost is mostly fixed overhead in 2-D: 1024 costs ≈ 256's
    lr: float = 5e-3
    seed: int = 0
    anneal: int | None = None  # steps of β from 0.01 to 1; 0: off; None: 3/8 of iters
    decay: float = 0.3  # fraction of the steps, at the end, over which lr decays to 0
    init_scale: float = 0.25  # std of the initial u, w (planar) or centres (radial)
    base_scale: float = 2.0  # initial std of q: wide, so that annealing starts over every mode
    restarts: int = 1  # independent flows fitted together; see ``fit``
    dtype: str = "float32"  # or "float64"
    hidden: list[int] | None = None  # coupling flows' MLP sizes; None: DEFAULT_HIDDEN (64, 64)
    bins: int | None = None  # spline flows' bins; None: DEFAULT_BINS (8)

    def __post_init__(self) -> None:
        """Fill in the flow type's defaults, so that a config always says what was fitted."""
        if self.flow in FLOW_TYPES:
            if self.K is None:
                self.K = DEFAULT_K[self.flow]
            if self.hidden is None and self.flow in COUPLING_TYPES:
                self.hidden = list(DEFAULT_HIDDEN)
            if self.bins is None and self.flow == "spline":
                self.bins = DEFAULT_BINS
        if self.hidden is not None:
            self.hidden = [int(h) for h in self.hidden]

    def validate(self, dim: int | None = None) -> None:
        """Refuse what cannot be fitted, before any work; ``dim``: the target's, when known."""
        if self.flow not in FLOW_TYPES:
            raise NfcliError(
                f"Unknown flow type {self.flow!r}. Choose one of: {', '.join(FLOW_TYPES)} "
                "(e.g. --flow radial)."
            )
        self._check_applies()
        checks = [
            ("K", self.K >= 1, "the number of layers, at least 1; use e.g. --K 16"),
            (
                "restarts",
                self.restarts >= 1,
                "the number of flows fitted at once, at least 1; e.g. 8",
            ),
            ("iters", self.iters >= 1, "the number of steps, at least 1; use e.g. --iters 5000"),
            ("batch", self.batch >= 1, "samples per step, at least 1; use e.g. --batch 256"),
            (
                "lr",
                self.lr > 0 and math.isfinite(self.lr),
                "Adam's step size, a positive number; use e.g. --lr 1e-3",
            ),
            (
                "anneal",
                self.anneal is None or self.anneal >= 0,
                "steps of β's schedule, 0 or more (0: none); e.g. --anneal 3000",
            ),
            ("decay", 0 <= self.decay <= 1, "a fraction between 0 and 1"),
            ("init_scale", self.init_scale > 0, "a positive standard deviation"),
            ("base_scale", self.base_scale > 0, "a positive standard deviation"),
        ]
        for name, ok, meaning in checks:
            if not ok:
                raise NfcliError(
                    f"{name} = {getattr(self, name)} is out of range: it is {meaning}."
                )
        resolve_dtype(self.dtype)
        if dim is not None and dim < 2 and self.flow in COUPLING_TYPES:
            raise NfcliError(
                f"--flow {self.flow} is a coupling flow: each layer splits the variables in two, "
                f"so it needs at least 2 of them; this target has {dim}. Use --flow planar, "
                "radial or affine for a 1-D target."
            )

    def _check_applies(self) -> None:
        """Options that the flow type does not have are refused, not silently ignored."""
        if self.hidden is not None and self.flow not in COUPLING_TYPES:
            raise NfcliError(
                f"--hidden {','.join(map(str, self.hidden))} does not apply to --flow {self.flow}: "
                "only coupling flows (nice, realnvp, spline) have hidden layers. Drop --hidden, "
                "or choose one of those flows."
            )
        if self.hidden is not None and (not self.hidden or min(self.hidden) < 1):
            raise NfcliError(
                f"--hidden {self.hidden} must list one or more layer sizes of at least 1 unit, "
                "e.g. --hidden 64,64."
            )
        if self.bins is not None and self.flow != "spline":
            raise NfcliError(
                f"--bins {self.bins} does not apply to --flow {self.flow}: only spline flows "
                "have bins. Drop --bins, or use --flow spline."
            )
        if self.bins is not None and self.bins < 2:
            raise NfcliError(f"--bins {self.bins} is out of range: use 2 or more, e.g. --bins 8.")
        if self.flow == "affine" and self.K != 1:
            raise NfcliError(
                f"--K {self.K} does not apply to --flow affine: it is one full-covariance affine "
                "layer (a Gaussian fit). Drop --K, or choose a flow with layers (e.g. --flow "
                "realnvp --K 8)."
            )

    def architecture(self) -> dict[str, Any]:
        """The flow's spec (``nfcli.flows.architecture``): what ``Flow`` is built from."""
        return architecture(
            self.flow, self.K, self.init_scale, self.base_scale, self.hidden, self.bins
        )

    @property
    def anneal_steps(self) -> int:
        """The β schedule's length: ``anneal``, or 3/8 of the steps when it is not given."""
        return round(ANNEAL_FRACTION * self.iters) if self.anneal is None else self.anneal

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return asdict(self)


def extend(config: FitConfig, iters: int) -> FitConfig:
    """``config`` for going on to ``iters`` steps in all (``fit(..., resume=...)``): β keeps the
    schedule it had (``anneal`` fixed in steps), and the learning rate's decay moves to the new
    end, so a fit that had finished trains at the full rate again before decaying."""
    return replace(config, iters=iters, anneal=config.anneal_steps)
