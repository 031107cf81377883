"""``nfcli mcmc``'s library: run several chains of one sampler on an energy, with or without a
fitted flow, summarise them (``nfcli.convergence``) and write the draws and the summary.

The kernels are in ``nfcli.mcmc.kernels``. Which ones need what:

- ``independence`` and ``neutra`` use a fitted flow q (a checkpoint): asymptotically exact samples
  of p, preconditioned by q. Their chains start at draws of q.
- ``hmc`` and ``rwmh`` need only the energy. With a flow their chains start at draws of q (the
  same start as the flow samplers: a fair comparison); without one, at the mode found by L-BFGS
  plus twice its Laplace spread in random directions (over-dispersed, so that split R-hat can
  see chains that have not mixed), or, where U has no proper mode, uniformly in [−2, 2]ᴰ
  (Stan's default).

Policy lives here, not in the CLI: the defaults, which method needs a flow, the checks of the
settings, the output files (the draws with a chain column, and a JSON summary beside them).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.table import Table
from torch import Tensor

from nfcli.config import SAMPLERS
from nfcli.convergence import RHAT_OK, VariableConvergence, convergence, worries
from nfcli.energy import Energy
from nfcli.errors import NfcliError
from nfcli.flows import Flow
from nfcli.io import atomic_write, check_sample_path, save_samples
from nfcli.mcmc.kernels import Chains, Watch, hmc, independence, neutra, rwmh
from nfcli.mixture import is_mixture

METHODS = ("neutra", "independence", "hmc", "rwmh")
FLOW_METHODS = ("neutra", "independence")  # they need a fitted flow
DEFAULT_WARMUP = {"neutra": 500, "independence": 100, "hmc": 1000, "rwmh": 1000}
DEFAULT_PLAIN_METHOD = "hmc"


def default_method(
    has_flow: bool, verdict: str | None = None, mixture: bool = False
) -> tuple[str, str]:
    """The sampler to use when none is asked for, and why, in words.

    Measured by ``benchmarks/mcmc.py`` (README, Exact samples): where the fit's verdict is
    "good", independence MH passed on every target at ~1,000× NeuTra's ESS per second; where it
    is not, independence MH once failed silently (the centred eight schools: a mean 8 MCSEs off
    with R-hat 1.000, q's tails too light for the chains ever to reach the neck), while every
    NeuTra failure measured showed in R-hat. So: independence after a good fit, NeuTra otherwise;
    HMC without a flow. A flow whose base is a mixture of modes (``mixture``: a fit that kept
    several modes, ``nfcli.mixture``) has no Gaussian base space for NeuTra, and independence MH
    is what moves between its modes: independence, whatever the verdict."""
    if not has_flow:
        return DEFAULT_PLAIN_METHOD, "no fitted flow: plain HMC"
    if mixture:
        return "independence", (
            "q is a mixture over several modes of p: independence MH, which moves between them "
            "(NeuTra needs a flow with a Gaussian base)"
        )
    if verdict == "good":
        return "independence", "the fit's verdict is good: q itself as the proposal"
    shown = verdict or "unknown"
    return "neutra", (
        f"the fit's verdict is {shown}: NeuTra HMC, which does not rely on q's tails (independence "
        "MH with a q whose tails are too light can stick without R-hat noticing)"
    )


# ``nfcli fit --sampler``: which sampler gives the draws a fit writes (samples.npy), and the
# chains it runs when that is MCMC: many short chains run as one batch, where an HMC iteration
# costs little more for 32 chains than for 4, and a slow Python U (GARCH) the same (measured:
# README, "Fits that cover p": 32 × (200 + 313) against 16 × (300 + 625) took 125 s against
# 222 s on GARCH and 15 s against 26 s on the centred eight schools, as accurate or more)
AFTER_FIT = {"chains": 32, "draws": 313, "warmup": 200}  # 10,016 draws, as many as q's


def draws_sampler(
    asked: str, dim: int, verdict: str | None, stopped: str | None, mixture: bool
) -> tuple[str, str]:
    """The sampler whose draws ``nfcli fit`` writes, and why, in words. "auto": q's own draws
    where they can be trusted or checked (a "good" verdict; 1-D and 2-D, where quadrature measures
    q against p: KL(p‖q), TV), and where the fit stopped early (its q is what there is); else MCMC
    with the flow (``default_method``: NeuTra after a fit that is not "good", independence MH for
    a mixture of modes), whose draws are p's whatever q's errors, as far as the chains mix."""
    if asked not in SAMPLERS:
        raise NfcliError(
            f"--sampler {asked}: choose auto (MCMC with the flow where the verdict is not good, "
            "from 3-D on), q (the flow's own draws), neutra or independence."
        )
    if asked != "auto":
        if asked == "neutra" and mixture:
            raise NfcliError(
                "--sampler neutra runs HMC in the flow's Gaussian base space, and this fit's base "
                "is a mixture over several modes of p. Use --sampler independence."
            )
        return asked, "asked for"
    if stopped is not None:
        if stopped == "improper":
            return "q", "the target is improper: no p to sample; q's own draws"
        return "q", f"the fit stopped early ({stopped}): q's own draws"
    if dim <= 2:
        return "q", "in 1-D and 2-D quadrature measures q against p itself (KL, TV)"
    if verdict == "good":
        return "q", "the fit's verdict is good: q's own draws"
    method, why = default_method(True, verdict, mixture)
    return method, f"MCMC corrects q's draws: {why}"


@dataclass
class McmcSettings:
    """What to run: ``method`` (one of METHODS; None: ``default_method``'s choice),
    ``chains`` chains of ``draws`` kept draws each after ``warmup`` iterations (None: the
    method's default), ``steps`` leapfrog steps per HMC iteration, and the random ``seed``."""

    method: str | None = None
    chains: int = 4
    draws: int = 1000
    warmup: int | None = None
    steps: int = 10
    seed: int = 0

    def resolve(
        self, has_flow: bool, verdict: str | None = None, mixture: bool = False
    ) -> McmcSettings:
        """The settings with every default filled in (the method by ``default_method`` from
        the fit's ``verdict``), or a one-paragraph error."""
        method = self.method or default_method(has_flow, verdict, mixture)[0]
        if method == "neutra" and mixture:
            raise NfcliError(
                "--method neutra runs HMC in the flow's Gaussian base space, and this fit's base "
                "is a mixture over several modes of p (it started from the modes its search "
                "found). Use --method independence, which moves between the modes, or hmc."
            )
        if method not in METHODS:
            raise NfcliError(
                f"--method {method}: not a sampler nfcli has. Use one of {', '.join(METHODS)} "
                "(neutra and independence need a fitted model.pt)."
            )
        if method in FLOW_METHODS and not has_flow:
            raise NfcliError(
                f"--method {method} samples with a fitted flow, and the target given is not a "
                "model.pt. Fit one first (nfcli fit TARGET -o run, then nfcli mcmc run/model.pt), "
                "or use --method hmc or rwmh, which need only the energy."
            )
        for name, value, low in (
            ("--chains", self.chains, 1),
            ("--draws", self.draws, 1),
            ("--steps", self.steps, 1),
        ):
            if value < low:
                raise NfcliError(f"{name} {value}: it must be at least {low}, e.g. {name} 4.")
        warmup = DEFAULT_WARMUP[method] if self.warmup is None else self.warmup
        if warmup < 0:
            raise NfcliError(f"--warmup {warmup}: it cannot be negative; 0 means no warm-up.")
        return replace(self, method=method, warmup=warmup)


@dataclass
class McmcRun:
    """A finished (or stopped) run: its resolved settings, where the chains started
    ("q", "mode" or "box"), the chains, each variable's summary, the worries in words, the
    seconds the sampler took, and whether it was stopped early."""

    settings: McmcSettings
    names: list[str]
    start: str
    chains: Chains
    variables: list[VariableConvergence]
    worries: list[str]
    seconds: float
    interrupted: bool = False
    target: str = ""
    why: str = ""  # why this method: "asked for", or default_method's reason

    @property
    def kept(self) -> int:
        """Kept draws per chain."""
        return self.chains.draws.shape[1]

    @property
    def columns(self) -> list[str]:
        """The draws file's columns: the chain, then the variables."""
        return ["chain", *self.names]

    @property
    def min_ess_per_second(self) -> float:
        """The smallest bulk or tail ESS over the variables, per second of sampling."""
        ess = min((min(v.ess_bulk, v.ess_tail) for v in self.variables), default=math.nan)
        return ess / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict:
        """The JSON summary: settings, per-chain acceptance and step, per-variable diagnostics."""
        return {
            "target": self.target,
            **asdict(self.settings),
            "method_reason": self.why,
            "start": self.start,
            "kept_draws_per_chain": self.kept,
            "warmup_done": self.chains.warmup_done,
            "interrupted": self.interrupted,
            "seconds": self.seconds,
            "min_ess_per_second": self.min_ess_per_second,
            "accept": [_finite(a) for a in self.chains.accept.tolist()],
            "step": [_finite(s) for s in self.chains.step.tolist()],
            "variables": [{k: _finite(v) for k, v in asdict(x).items()} for x in self.variables],
            "worries": self.worries,
            "columns": self.columns,
        }


def _finite(x: float | str) -> float | str | None:
    """JSON has no NaN or infinity: those are written as null."""
    return x if isinstance(x, str) or math.isfinite(x) else None


def starting_points(
    energy: Energy, chains: int, seed: int, flow: Flow | None = None
) -> tuple[Tensor, str]:
    """Each chain's start (chains, D), float64, and where it came from (see the module's doc)."""
    g = torch.Generator().manual_seed(seed)
    if flow is not None:
        q = flow.float64()
        with torch.no_grad():
            z, _ = q.rsample(chains, g)
        return z, "q"
    from nfcli.mode import mode_and_laplace  # L-BFGS: only when needed

    D = energy.dim
    eps = torch.randn(chains, D, generator=g, dtype=torch.float64)
    try:
        lap = mode_and_laplace(energy, seed=seed)
        ok = lap.min_curvature > 0 and bool(lap.mode.isfinite().all())
    except (NfcliError, RuntimeError):
        ok = False
    if ok:
        L = torch.linalg.cholesky(lap.covariance.double())
        z = lap.mode.double() + 2.0 * eps @ L.T
        inside = energy(z).double().isfinite()
        z = torch.where(inside[:, None], z, lap.mode.double())  # beyond a wall: the mode itself
        return z.detach(), "mode"
    box = 4 * torch.rand(chains, D, generator=g, dtype=torch.float64) - 2
    return box, "box"


def run_mcmc(
    energy: Energy,
    settings: McmcSettings,
    flow: Flow | None = None,
    watch: Watch | None = None,
    target: str = "",
    verdict: str | None = None,
) -> McmcRun:
    """Run ``settings.chains`` chains of the chosen sampler on ``energy`` (with ``flow`` for the
    flow samplers, and as the start of the plain ones) and summarise them. ``verdict``: the
    fit's trust-report verdict, which chooses the method when none is set."""
    mixture = flow is not None and is_mixture(flow)
    s = settings.resolve(flow is not None, verdict, mixture)
    why = "asked for" if settings.method else default_method(flow is not None, verdict, mixture)[1]
    watch = watch or Watch()
    t0 = time.perf_counter()
    if s.method == "independence":
        chains = independence(flow, energy, s.chains, s.draws, s.warmup, s.seed, watch=watch)
        start = "q"
    elif s.method == "neutra":
        chains = neutra(flow, energy, s.chains, s.draws, s.warmup, s.seed, s.steps, watch=watch)
        start = "q"
    else:
        init, start = starting_points(energy, s.chains, s.seed, flow)
        if s.method == "hmc":
            chains = hmc(energy, init, s.draws, s.warmup, s.seed + 1, s.steps, watch=watch)
        else:
            chains = rwmh(energy, init, s.draws, s.warmup, s.seed + 1, watch=watch)
    seconds = time.perf_counter() - t0
    variables = convergence(chains.draws, energy.names)
    kept = chains.draws.shape[1]
    return McmcRun(
        s,
        list(energy.names),
        start,
        chains,
        variables,
        worries(variables, s.chains) if kept else [],
        seconds,
        interrupted=kept < s.draws,
        target=target,
        why=why,
    )


def chains_summary(run: McmcRun, why: str) -> dict:
    """What metrics.json keeps of the chains behind a fit's draws (``draws_sampler``): the
    settings, the worst R-hat and smallest bulk and tail ESS over the variables, the acceptance,
    the seconds, the worries in words (``nfcli.convergence.worries``) and the verdict on the
    draws: "good" where there are none, else "do not trust"."""
    v = run.variables
    finite = [x for x in v if math.isfinite(x.rhat)]
    return {
        "method": run.settings.method,
        "why": why,
        "chains": run.settings.chains,
        "draws_per_chain": run.kept,
        "warmup": run.chains.warmup_done,
        "seconds": run.seconds,
        "accept": _finite(float(run.chains.accept.mean())),
        "max_rhat": _finite(max((x.rhat for x in finite), default=math.nan)),
        "min_ess_bulk": _finite(min((x.ess_bulk for x in v), default=math.nan)),
        "min_ess_tail": _finite(min((x.ess_tail for x in v), default=math.nan)),
        "interrupted": run.interrupted,
        "worries": run.worries,
        "verdict": "do not trust" if run.worries or run.interrupted else "good",
    }


def check_draws_path(path: str, force: bool) -> tuple[str, Path]:
    """The draws file's path and its JSON summary's (same name, .json), checked before any
    sampling: a known extension, a writable folder, nothing replaced without ``force``."""
    if path == "-":
        raise NfcliError(
            "-o -: nfcli mcmc writes the draws and a JSON summary beside them, so it needs a file "
            "name, e.g. -o chains.npy or -o chains.csv."
        )
    check_sample_path(path, force)
    summary = Path(path).with_suffix(".json")
    if not force and summary.exists():
        raise NfcliError(
            f"{summary} already exists and would be replaced by the run's summary. Pass --force "
            "to overwrite it, or choose another file with -o."
        )
    return path, summary


def write_mcmc(run: McmcRun, path: str) -> Path:
    """The kept draws to ``path`` (.npy/.pt: an array of shape (C·N, 1 + D) whose first column is
    the chain 0…C−1; .csv: the same with a header "chain,x,y,…"), and the summary as JSON
    beside it (same name, .json). Returns the JSON's path."""
    C, N, D = run.chains.draws.shape
    chain = torch.arange(C, dtype=torch.float64).repeat_interleave(N)[:, None]
    save_samples(torch.cat([chain, run.chains.draws.reshape(C * N, D)], 1), path, run.columns)
    summary = Path(path).with_suffix(".json")
    text = json.dumps(run.to_dict(), indent=2, allow_nan=False) + "\n"
    atomic_write(summary, lambda f: f.write(text.encode()))
    return summary


def chains_table(run: McmcRun) -> Table:
    """The run's per-variable summary (mean, sd, MCSE, R-hat, ESS) as a rich table, with each
    chain's acceptance rate in the caption."""
    s = run.settings
    t = Table(
        title=f"{s.method}: {s.chains} chains × {run.kept} draws after {run.chains.warmup_done} "
        f"warm-up, {run.seconds:.1f} s",
        caption="acceptance per chain: "
        + ", ".join(f"{a:.2f}" for a in run.chains.accept.tolist())
        + f"; smallest ESS per second: {run.min_ess_per_second:.0f}",
    )
    for col in ("variable", "mean", "sd", "MCSE", "R-hat", "ESS bulk", "ESS tail"):
        t.add_column(col, justify="left" if col == "variable" else "right")
    for v in run.variables:
        flag = "" if v.rhat < RHAT_OK else " ✗"
        t.add_row(
            v.name,
            f"{v.mean:.4g}",
            f"{v.sd:.4g}",
            f"{v.mcse_mean:.2g}",
            f"{v.rhat:.3f}{flag}",
            f"{v.ess_bulk:.0f}",
            f"{v.ess_tail:.0f}",
        )
    return t
