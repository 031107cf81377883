"""A start from several modes of p: find them, and keep them.

Reverse KL is mode-seeking: a fit started from one Gaussian over several modes (or from one of
them) settles on some and anneals the rest away, even when the start's search had found them all
(three equal Gaussians 8 sds apart in 4-D: q's shares 0.9998 / 0.0002 / 0). Here the modes are
found by a survey of U, and kept: q's base becomes a mixture of their Gaussians
(``nfcli.bases.GaussianMixture``) whose weights are not learnt by the gradient but set from
importance sampling, so no gradient step can take a mode's mass away.

1. ``survey``: BFGS (``nfcli.lost_modes.minimise``) from S dispersed starts at once: half of them
   around the lowest mode found so far, c + s·Lε (LLᵀ its Laplace covariance, ε ~ N(0, I),
   s log-uniform in [1, 6√D]), half around the origin, s·ε with s log-uniform in [1, 64] (the
   modes of p need not lie near the first one found: 40 Gaussians spread over [−40, 40]²). The
   ends that are proper minima are merged into distinct modes (``nfcli.mode.distinct_modes``),
   each counted by the starts that reached it. How complete the set is, Good–Turing's estimate:
   the chance that one more start finds a mode not yet seen is about n₁/N, n₁ the modes reached
   by one start only, N the starts that reached a mode. Where p has combinatorially many modes
   (16 independent double wells: 2¹⁶ of them) nearly every start finds a new one, and no mixture
   of the modes found can stand for p.
2. ``mixture_components``: the modes' Laplace Gaussians N(m_k, H_k⁻¹), weighted by their Laplace
   masses, in the coordinates of the moment-matched Gaussian N(m, LLᵀ) of the mixture (the flow's
   fixed affine layer), where every learnt layer works at unit scale.
3. ``reweight``: the weights that make the mixture closest to p in the mass-covering sense, for
   the components as they are: EM on importance-weighted draws of q (Cappé, Douc, Guillin, Marin
   & Robert 2008, "Adaptive importance sampling in general mixture classes", the weights' step),

       w_m ← Σ_i W̄_i r_im,   r_im = w_m q_m(z_i) / Σ_k w_k q_k(z_i),   W̄_i ∝ p̃(z_i)/q(z_i),

   with q's draws z_i, their Pareto-smoothed normalised weights W̄ (``nfcli.diagnostics.psis``)
   and q_m the flow's density through component m alone (the layers' log-determinant is common
   to every component, so r_im needs only the base). Iterated to a fixed point on one set of
   draws: the weights that maximise Σ_i W̄_i ln q(z_i), i.e. minimise the importance-sampling
   estimate of KL(p‖q) over the weights. Where the components do not overlap this is each
   component's share of p's mass (the IS estimate of the mass around its mode).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nfcli.bases import GaussianMixture
from nfcli.diagnostics import psis
from nfcli.energy import Energy
from nfcli.flows import Flow
from nfcli.lost_modes import BFGS_BUDGET, MIN_STARTS, _minima, _unique, into_support, minimise
from nfcli.mode import Laplace, derivatives, distinct_modes, moment_match

SURVEY_STARTS = {1: 1024, 2: 1024}  # starts in 1-D and 2-D, where they are cheap
SURVEY_STARTS_HIGH = 256  # from 3-D on
SURVEY_STEPS = 300  # BFGS steps per start
MAX_COMPONENTS = 64  # a mixture start keeps at most this many modes (the most massive)
UNSEEN_MAX = 0.05  # Good–Turing's unseen share above which the modes found are not all of p's
WEIGHT_FLOOR = 1e-4  # each weight at least this over M: a component stays alive to be reweighted
REWEIGHT_DRAWS = 4096  # draws of q per reweighting during a fit
REWEIGHT_EVERY = 500  # steps between reweightings during a fit
EM_ITERATIONS = 200


@dataclass
class Survey:
    """What ``survey`` found: the distinct proper ``modes`` (Laplace approximations, lowest U
    first), how many starts reached each (``counts``), the ``starts`` run, those that ended at a
    proper minimum (``reached``), Good–Turing's ``unseen`` share and the ``seconds`` taken."""

    modes: list[Laplace] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    starts: int = 0
    reached: int = 0
    unseen: float = 1.0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Whether the modes found are, by Good–Turing, very likely all the modes the starts can
        reach (and so p's, where the starts cover p)."""
        return self.reached > 0 and self.unseen <= UNSEEN_MAX


def survey_starts(dim: int) -> int:
    """Starts for a survey in ``dim`` dimensions, within the BFGS memory budget of the lost-mode
    search (``nfcli.lost_modes.BFGS_BUDGET``)."""
    wanted = SURVEY_STARTS.get(dim, SURVEY_STARTS_HIGH)
    return min(wanted, max(MIN_STARTS, BFGS_BUDGET // dim**2))


def survey(
    energy: Energy,
    around: Laplace | None,
    starts: int | None = None,
    seed: int = 0,
    steps: int = SURVEY_STEPS,
) -> Survey:
    """The distinct proper modes of U that BFGS reaches from ``starts`` dispersed starts (the
    module docstring, step 1); ``around``: the lowest mode found so far (None: the origin)."""
    t0 = time.perf_counter()
    D = energy.dim
    S = starts or survey_starts(D)
    g = torch.Generator().manual_seed(seed + 29)
    centre = torch.zeros(D, dtype=torch.float64) if around is None else around.mode.double()
    first = S // 2
    half = first // 2 if around is not None else 0
    eps = torch.randn(first, D, generator=g, dtype=torch.float64)
    u = torch.rand(first, 1, generator=g, dtype=torch.float64)
    near = torch.empty(0, D, dtype=torch.float64)
    if half:
        L = torch.linalg.cholesky(around.covariance.double())
        near = centre + (6 * math.sqrt(D)) ** u[:half] * eps[:half] @ L.T
    far = 64 ** u[half:] * eps[half:]
    points = into_support(energy, torch.cat([near, far]), centre)
    ends, settled = minimise(energy, points, steps)
    # the second half: uniform over the box the first half's ends span, widened by half of it on
    # each side, where the modes are (a far mode's basin gets few of the first half's starts)
    found = ends[settled & torch.isfinite(ends).all(-1)]
    _, first_label = _unique(found)
    if len(found) and int((torch.bincount(first_label) == 1).sum()) > len(found) / 2:
        # most starts found a mode of their own: far more modes than starts (nothing to box)
        return Survey(starts=first, reached=len(found), seconds=time.perf_counter() - t0)
    if len(found):
        lo, hi = found.min(0).values, found.max(0).values
        span = (hi - lo).clamp_min(1.0)
        box = lo - span / 2 + 2 * span * torch.rand(S - first, D, generator=g, dtype=torch.float64)
        box = into_support(energy, box, centre)
        more, more_settled = minimise(energy, box, steps)
        ends, settled = torch.cat([ends, more]), torch.cat([settled, more_settled])
    result = Survey(starts=S)
    reps, label = _unique(ends[settled])
    if len(reps):
        u_, grad, hess = derivatives(energy, reps)
        proper = _minima(u_, grad, torch.linalg.eigvalsh(hess.nan_to_num()))
        counts = torch.bincount(label, minlength=len(reps))
        modes = distinct_modes(energy, list(reps[proper]))
        # each proper end's starts go to the distinct mode it was merged into (the nearest)
        per_mode = [0] * len(modes)
        for rep, c in zip(reps[proper], counts[proper].tolist(), strict=True):
            if modes:
                k = min(range(len(modes)), key=lambda k: float((modes[k].mode - rep).norm()))
                per_mode[k] += c
        result.modes, result.counts = modes, per_mode
        result.reached = sum(per_mode)
        singletons = sum(1 for c in counts[proper].tolist() if c == 1)
        result.unseen = singletons / result.reached if result.reached else 1.0
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class Components:
    """A mixture start: the fixed affine layer's N(``mean``, ``covariance``) (the mixture's
    moments) and, in its standardised coordinates, the components' ``means`` (M, D),
    ``covariances`` (M, D, D) and ``log_weights`` (M,) (Laplace masses, normalised)."""

    mean: Tensor
    covariance: Tensor
    means: Tensor
    covariances: Tensor
    log_weights: Tensor

    @property
    def count(self) -> int:
        return len(self.log_weights)


def mixture_components(modes: list[Laplace]) -> Components:
    """The modes' Laplace Gaussians as a mixture start (the module docstring, step 2): at most
    MAX_COMPONENTS of them, the most massive by the Laplace ln Z."""
    modes = sorted(modes, key=lambda m: -m.log_z)[:MAX_COMPONENTS]
    log_w = torch.log_softmax(torch.tensor([m.log_z for m in modes], dtype=torch.float64), 0)
    mean, cov = moment_match(modes, log_w)
    L = torch.linalg.cholesky(cov)
    means = torch.linalg.solve_triangular(
        L, torch.stack([m.mode for m in modes]).T - mean[:, None], upper=False
    ).T
    covs = []
    for m in modes:
        a = torch.linalg.solve_triangular(L, m.covariance.double(), upper=False)
        c = torch.linalg.solve_triangular(L, a.T, upper=False)
        covs.append(0.5 * (c + c.T))
    return Components(mean, cov, means, torch.stack(covs), log_w)


def is_mixture(flow: Flow) -> bool:
    return isinstance(flow.base, GaussianMixture)


@torch.no_grad()
def reweight(
    flow: Flow, energy: Energy, n: int = REWEIGHT_DRAWS, seed: int = 0
) -> list[list[float]]:
    """Set the mixture base's weights (every restart's) by importance-weighted EM (the module
    docstring, step 3) on ``n`` draws of q from a generator of its own (``seed``), and return
    the new weights (R, M) as lists. Where no draw has a finite weight the weights stay."""
    base = flow.base
    if not isinstance(base, GaussianMixture):
        raise ValueError("reweight needs a flow whose base is a GaussianMixture")
    g = torch.Generator(device=base.loc.device).manual_seed(seed)
    eps = base.standard_rsample(n, g)  # (R, n, D) standardised base draws
    z, log_q = flow.push(eps)
    u = energy(z.reshape(-1, flow.dim)).reshape(z.shape[:-1]).to(torch.float64)
    log_w = (-u - log_q.double()).nan_to_num(nan=-math.inf)
    comp = base.component_log_prob(eps).double()  # (R, M, n)
    floor = math.log(WEIGHT_FLOOR / base.components)
    for r in range(flow.restarts):
        ok = torch.isfinite(log_w[r]) & torch.isfinite(comp[r]).all(0)
        if int(ok.sum()) < 10:
            continue
        smoothed, _ = psis(log_w[r][ok])
        weights = torch.softmax(smoothed, 0)  # W̄_i over the finite draws
        lp = comp[r][:, ok]  # (M, n_ok)
        lw = base.log_weights[r].double().clone()
        for _ in range(EM_ITERATIONS):
            resp = torch.softmax(lw[:, None] + lp, 0)  # r_im
            new = torch.log((resp * weights).sum(1).clamp_min(1e-300))
            new = torch.log_softmax(new.clamp_min(floor), 0)
            done = float((new - lw).abs().max()) < 1e-9
            lw = new
            if done:
                break
        base.log_weights[r] = lw.to(base.log_weights)
    return base.log_weights.exp().tolist()


def mixture_start(energy: Energy, lowest: Laplace | None, seed: int = 0) -> Components | None:
    """The mixture start from the modes a ``survey`` of U finds (``lowest``: the lowest mode the
    start's L-BFGS found, its Laplace approximation), or None where one Gaussian start stands:
    the survey finds fewer than two modes, or a set of modes that is incomplete (Good–Turing:
    ``Survey.complete``), as with combinatorially many modes. Measured on benchmarks/: every
    posterior has one mode (the survey costs 1–3 s, 11 s on GARCH's Python-loop U), three
    Gaussians 10 sds apart in 4-D had one found by the start's L-BFGS and three by the survey."""
    found = survey(energy, lowest, seed=seed)
    if len(found.modes) < 2 or not found.complete:
        return None
    return mixture_components(found.modes)


def modes_out_of_reach(energy: Energy, reach: float, seed: int = 0) -> bool:
    """In 1-D and 2-D, where fits start as the paper's N(0, base_scale²) and anneal: whether p has
    several modes (a complete ``survey`` from the origin finds two or more) and some of them lie
    beyond ``reach`` of the origin, where that start cannot see them."""
    found = survey(energy, None, seed=seed)
    if len(found.modes) < 2 or not found.complete:
        return False
    return any(float(m.mode.norm()) > reach for m in found.modes)
