"""What a fit is asked to do: ``FitConfig``, every knob with its default, and the rules that check
it (``validate``) and fill in what depends on the flow type. ``nfcli.train.fit`` runs it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from nfcli.devices import resolve_dtype
from nfcli.errors import NfcliError
from nfcli.flows import (
    BASE_TYPES,
    COUPLING_TYPES,
    DEFAULT_BINS,
    DEFAULT_HIDDEN,
    DEFAULT_K,
    FLOW_TYPES,
    MIXING,
    architecture,
)
from nfcli.threads import parse_threads

ANNEAL_FRACTION = 0.375  # the measured defaults: 3000 of 8000 steps
FLOW_CHOICES = ("auto", *FLOW_TYPES)
STARTS = ("auto", "origin", "mode")
SAMPLERS = ("auto", "q", "neutra", "independence")  # the draws a fit writes (nfcli.mcmc)
SET_BY_THE_FIT = ("components",)  # FitConfig fields that record what the fit chose: no options
# FitConfig fields that say how a fit runs, not what it fits: --resume may change them, and a
# fit that differs from another only in them is the same fit (nfcli compare --reuse)
RUN_SETTINGS = ("threads",)
AUTO_FLOW = "realnvp"  # --flow auto from 3 dimensions on (README, "Real posteriors")
# what auto resolves to in 1-2 D, for any D: the settings every measurement before issue 13 used
# (benchmarks that reproduce those tables pin it; the flow type they set themselves)
PAPER_SETUP = {"start": "origin", "converge": False, "batch": 1024}


@dataclass
class FitConfig:
    """Every knob of a fit. The 2-D defaults were chosen with ``benchmarks/sweep.py`` and are
    checked by ``benchmarks/quality.py`` (README, "Quality at defaults"); those from 3 dimensions
    on by ``benchmarks/posteriors.py`` (README, "Real posteriors").

    ``flow``, ``start`` and ``converge`` may be "auto" (None for converge): ``resolve(dim)``
    turns them into what is fitted, by the target's dimension (``resolve``'s docstring)."""

    K: int | None = None  # layers; None: the flow type's default (DEFAULT_K: 32 planar/radial)
    flow: str = "auto"  # one of FLOW_TYPES, or auto: chosen by ``resolve``
    iters: int = 8000
    # samples per step; None: 1024 in 1-2 D (where a step's cost is mostly fixed overhead: 1024
    # costs about what 256 does), 256 from 3 D on (README, "Real posteriors")
    batch: int | None = None
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
    start: str = "auto"  # origin: q0 = N(0, base_scale²); mode: the Gaussian at the mode
    converge: bool | None = None  # stop when the loss has levelled off; None: auto
    base: str = "gaussian"  # or "student_t": heavier tails, learnt degrees of freedom
    # torch.compile U for the training loop: auto (a Python-file U whose eager calls would cost
    # more than compiling; nfcli.compiled.choose_energy), on, or off
    compile_energy: str = "auto"
    # torch.compile the flow's step (ε → z, ln q) for the training loop: auto (when the time it
    # is expected to save exceeds compiling's; nfcli.compiled.choose_flow), on, or off
    compile_flow: str = "auto"
    # the draws the fit writes: auto (MCMC with the flow where the verdict is not good, from 3-D
    # on; nfcli.mcmc.chains.draws_sampler), q (the flow's own), neutra or independence
    sampler: str = "auto"
    # the base's components: 1, a Gaussian; M > 1, a mixture of the M modes' Gaussians that the
    # start's survey found (nfcli.mixture). Set by the fit, not an option: it records, for resume
    # and the checkpoint, what the start was
    components: int = 1
    # CPU threads for the fit (torch.set_num_threads, process-wide): auto (nfcli.threads' policy,
    # as on the command line: one thread unless the problem is large and cores are free), or a
    # count
    threads: int | str = "auto"

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

    @property
    def resolved(self) -> bool:
        """Whether nothing is left to ``resolve``."""
        return (
            self.flow != "auto"
            and self.start != "auto"
            and self.converge is not None
            and self.batch is not None
        )

    def resolve(self, dim: int) -> FitConfig:
        """The config that is fitted to a target of ``dim`` dimensions: what is "auto" chosen by
        measurement (README, "Real posteriors"), what was set kept.

        D ≤ 2: the paper's setup, as measured on its targets (README, "Quality at defaults"):
        planar flow, q0 = N(0, base_scale²), β annealed, every step run, 1024 samples per step.
        D ≥ 3: ``AUTO_FLOW`` started at the Gaussian at the mode (``nfcli.mode.gaussian_start``:
        a posterior's scales and correlations are known before the first step, so nothing is
        annealed), 256 samples per step (a quarter of the cost for a loss that converges to
        the same fit: README, "Real posteriors"), and the fit stops once its loss has levelled
        off (``nfcli.train``)."""
        low = dim <= 2
        flow = ("planar" if low else AUTO_FLOW) if self.flow == "auto" else self.flow
        start = ("origin" if low else "mode") if self.start == "auto" else self.start
        converge = (not low) if self.converge is None else self.converge
        batch = (1024 if low else 256) if self.batch is None else self.batch
        return replace(self, flow=flow, start=start, converge=converge, batch=batch)

    def validate(self, dim: int | None = None) -> None:
        """Refuse what cannot be fitted, before any work; ``dim``: the target's, when known."""
        if self.flow not in FLOW_CHOICES:
            raise NfcliError(
                f"Unknown flow type {self.flow!r}. Choose one of: {', '.join(FLOW_CHOICES)} "
                "(e.g. --flow radial)."
            )
        if self.compile_energy not in ("auto", "on", "off"):
            raise NfcliError(
                f"--compile-energy {self.compile_energy}: choose auto (compile a Python-file "
                "energy when its eager calls would cost more than compiling), on or off."
            )
        if self.compile_flow not in ("auto", "on", "off"):
            raise NfcliError(
                f"--compile-flow {self.compile_flow}: choose auto (compile the flow's training "
                "step when the time it saves exceeds the compilation's), on or off."
            )
        if self.sampler not in SAMPLERS:
            raise NfcliError(
                f"--sampler {self.sampler}: choose auto (MCMC with the flow where the verdict is "
                "not good, from 3-D on), q (the flow's own draws), neutra or independence."
            )
        parse_threads(self.threads)  # "auto" or a positive count, at most the CPUs
        if self.base not in BASE_TYPES:
            raise NfcliError(
                f"Unknown base {self.base!r}. Choose one of: {', '.join(BASE_TYPES)} (student_t: "
                "heavier tails than a Gaussian, with degrees of freedom learnt per coordinate)."
            )
        if self.start not in STARTS:
            raise NfcliError(
                f"Unknown start {self.start!r}. Choose one of: {', '.join(STARTS)} (origin: the "
                "paper's N(0, base_scale²); mode: the Gaussian at the mode of p)."
            )
        if dim is not None and not self.resolved:
            self.resolve(dim).validate(dim)
            return
        if self.flow == "auto":
            self._check_applies_auto()
        else:
            self._check_applies()
        checks = [
            (
                "K",
                self.K is None or self.K >= 1,
                "the number of layers, at least 1; use e.g. --K 16",
            ),
            (
                "restarts",
                self.restarts >= 1,
                "the number of flows fitted at once, at least 1; e.g. 8",
            ),
            ("iters", self.iters >= 1, "the number of steps, at least 1; use e.g. --iters 5000"),
            (
                "batch",
                self.batch is None or self.batch >= 1,
                "samples per step, at least 1; use e.g. --batch 256",
            ),
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

    def _check_applies_auto(self) -> None:
        """Before the dimension is known, --flow auto takes only what applies to every flow."""
        if self.bins is not None:
            raise NfcliError(
                f"--bins {self.bins} needs --flow spline: with --flow auto the flow type is "
                "chosen by the target's dimension, and only spline flows have bins."
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

    def architecture(self, dim: int | None = None) -> dict[str, Any]:
        """The flow's spec (``nfcli.flows.architecture``) for a target of ``dim`` dimensions:
        what ``Flow`` is built from."""
        if self.flow == "auto" or self.start == "auto":
            raise ValueError("resolve(dim) the config first: flow or start is auto")
        return architecture(
            self.flow,
            self.K,
            self.init_scale,
            self.base_scale,
            self.hidden,
            self.bins,
            # a product of Student-t coordinates is not rotation-invariant: rotations between
            # couplings scramble the tails the base learns (benchmarks/tail_base.py)
            mixing="permutation" if self.base == "student_t" else MIXING,
            start=self.start,
            base=self.base,
            dim=dim,
            components=self.components,
        )

    @property
    def anneal_steps(self) -> int:
        """The β schedule's length: ``anneal``; when it is not given, 3/8 of the steps from the
        origin and none from the mode (q starts where the mass is: flattening p would only send
        it away)."""
        if self.anneal is not None:
            return self.anneal
        return 0 if self.start == "mode" else round(ANNEAL_FRACTION * self.iters)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return asdict(self)

    def fitted(self) -> dict:
        """``to_dict`` without ``RUN_SETTINGS``: what decides the fit, for comparing two."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_SETTINGS}


def extend(config: FitConfig, iters: int) -> FitConfig:
    """``config`` for going on to ``iters`` steps in all (``fit(..., resume=...)``): β keeps the
    schedule it had (``anneal`` fixed in steps), and the learning rate's decay moves to the new
    end, so a fit that had finished trains at the full rate again before decaying."""
    return replace(config, iters=iters, anneal=config.anneal_steps)
