"""Textbook densities typed as a statistics user would type them, scored against scipy (issue 14).

    .venv/bin/python benchmarks/textbook.py                       # every case, seeds 0,1,2
    .venv/bin/python benchmarks/textbook.py --seeds 0 --only gamma3,banana
    .venv/bin/python benchmarks/textbook.py --iters 300 --seeds 0 # smoke run of the pipeline
    .venv/bin/python benchmarks/textbook.py --check-truth         # the truths themselves, no fit
    .venv/bin/python benchmarks/textbook.py --list

Each case is U as a user would copy it from a textbook (unnormalised, in the expression language:
a support written as a Piecewise with no otherwise-branch, or a log that is undefined outside, so
that U is NaN where p has no mass), and an independent truth: the normalised ln p written with
numpy/scipy (scipy.stats where it has the law, else ln Z by scipy.integrate.quad) and its support.
The truth never uses nfcli. Each case is fitted with ``fit(energy, FitConfig(seed=s))``, nothing
else set (``--iters`` only for smoke runs), and scored from the flow alone:

    KL(q‖p)  = E_q[ln q − ln p] over DRAWS draws of q (ln q exact, float64, from the same
               forward pass), ± its standard error, over the draws inside p's support
    outside  = the fraction of those draws outside p's support (where KL(q‖p) is +∞)
    TV       = ½ ∫ |p − q| on a grid (1-D: GRID_1D points; 2-D: GRID_2D² points) spaced as
               c + s·sinh(u), u uniform, over the truth's box joined with q's 1e-4 … 1 − 1e-4
               quantiles, q by its exact density (``nfcli.diagnostics.log_prob``); the mass of p
               and of q that the grid misses is added (an upper bound on their share of TV)
    pass     = KL(q‖p) ≤ KL_PASS and outside ≤ OUTSIDE_PASS

Prints one Markdown row per case (the median over seeds, the worst seed's KL, how many seeds
pass, fit seconds, how the fit ended) and writes every seed's numbers to --out as JSON. A case
whose text does not parse (a function nfcli does not know yet, such as lgamma) gets a row saying
"does not parse", and the others go on.

``--check-truth`` checks the truths instead: each integrates to 1 by quad/dblquad over its
support (within CHECK_TOL), the TV grid over its box holds that mass too, and where the text
parses, U + ln p is constant over the box (the text and the truth are the same law up to ln Z)
and U is not finite outside the support.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from provenance import nfcli_commit
from scipy import integrate, special, stats

import nfcli
import nfcli.train
from nfcli import FitConfig, NfcliError, fit, load_energy
from nfcli.diagnostics import log_prob

DRAWS = 20_000
GRID_1D = 20_000
GRID_2D = 400
KL_PASS, OUTSIDE_PASS = 0.05, 1e-3
CHECK_TOL = 1e-4
DEFAULT_OUT = "runs/textbook.json"

LogP = Callable[[np.ndarray], np.ndarray]  # (N, D) → (N,)
Support = Callable[[np.ndarray], np.ndarray]  # (N, D) → (N,) bool


def everywhere(z: np.ndarray) -> np.ndarray:
    return np.ones(len(z), dtype=bool)


@dataclass(frozen=True)
class Case:
    """One textbook density. ``text``: U as typed; ``log_p``: the normalised ln p (N, D) → (N,)
    (only called inside ``support``); ``box``: per axis, a range holding all but a negligible part
    of p's mass (the TV grid's window); ``centre``/``scale``: per axis, where the sinh-spaced grid
    is finest and how fast it widens; ``limits``: for the check's dblquad, the outer axis, its
    range and the inner range as a function of the outer value (default: the whole plane)."""

    name: str
    text: str
    log_p: LogP
    box: tuple[tuple[float, float], ...]
    centre: tuple[float, ...]
    scale: tuple[float, ...]
    support: Support = everywhere
    note: str = ""
    limits: tuple[int, tuple[float, float], Callable[[float], tuple[float, float]]] | None = None

    @property
    def dim(self) -> int:
        return len(self.box)


def true_log_p(case: Case, z: np.ndarray) -> np.ndarray:
    """ln p(z) (N,) for points z (N, D): −∞ outside the support."""
    z = np.asarray(z, dtype=float).reshape(-1, case.dim)
    inside = case.support(z)
    out = np.full(len(z), -np.inf)
    if inside.any():
        with np.errstate(all="ignore"):
            out[inside] = case.log_p(z[inside])
    return out


def col(i: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda z: z[:, i]


x_, y_ = col(0), col(1)


def law(dist) -> LogP:
    """ln p of a frozen scipy.stats law of one variable."""
    return lambda z: dist.logpdf(z[:, 0])


def by_quad(log_f: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, points=()) -> LogP:
    """ln p = ln f − ln Z for an unnormalised 1-D ln f (vectorised over x), Z = ∫_lo^hi f by quad
    (computed once, on first use)."""

    @cache
    def log_z() -> float:
        f = lambda t: math.exp(float(log_f(np.array([t]))[0]))  # noqa: E731
        z = integrate.quad(f, lo, hi, points=points or None, limit=500, epsabs=0, epsrel=1e-11)
        return math.log(z[0])

    return lambda z: log_f(z[:, 0]) - log_z()


def positive(z: np.ndarray) -> np.ndarray:
    return z[:, 0] > 0


def _mixture_1d(z: np.ndarray) -> np.ndarray:
    x = z[:, 0]
    a = math.log(0.3) + stats.norm(-2, 1).logpdf(x)
    b = math.log(0.7) + stats.norm(2, 0.5).logpdf(x)
    return np.logaddexp(a, b)


def _von_mises(z: np.ndarray) -> np.ndarray:
    kappa = 4.0
    log_i0 = math.log(special.i0e(kappa)) + kappa  # ln I0(κ), stably
    return kappa * np.cos(z[:, 0]) - math.log(2 * math.pi) - log_i0


def _skew_normal_2d(z: np.ndarray) -> np.ndarray:
    """2 φ₂(z) Φ(αᵀz), α = (2, 2) (Azzalini)."""
    return (
        math.log(2)
        + stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(z)
        + stats.norm.logcdf(2 * z[:, 0] + 2 * z[:, 1])
    )


def _normal_gamma(z: np.ndarray) -> np.ndarray:
    """Precision x ~ Gamma(3, rate 1), y | x ~ N(0, 1/x)."""
    x, y = z[:, 0], z[:, 1]
    return stats.gamma(3).logpdf(x) + stats.norm(0, 1 / np.sqrt(x)).logpdf(y)


def _mixture_2d(z: np.ndarray) -> np.ndarray:
    a = stats.multivariate_normal([2, 0], np.eye(2)).logpdf(z)
    b = stats.multivariate_normal([-2, 0], np.eye(2)).logpdf(z)
    return np.logaddexp(a, b) - math.log(2)


def _funnel(z: np.ndarray) -> np.ndarray:
    """Neal's funnel: y ~ N(0, 3²), x | y ~ N(0, e^y)."""
    x, y = z[:, 0], z[:, 1]
    return stats.norm(0, 3).logpdf(y) + stats.norm(0, np.exp(y / 2)).logpdf(x)


NEEDS_LGAMMA = "needs lgamma in the expression language"
INF = math.inf

CASES: list[Case] = [
    # --- 1-D, on the whole line -------------------------------------------------------------
    Case("normal", "(x - 3)**2/8", law(stats.norm(3, 2)), ((-13, 19),), (3,), (2,)),
    Case(
        "skew_normal",
        "x**2/2 - log(1 + erf(4*x/sqrt(2)))",
        law(stats.skewnorm(4)),
        ((-4, 6),),
        (0.7,),
        (0.6,),
        note="1 + erf underflows to 0 (U = +inf) below x ≈ -1.5 in float32",
    ),
    Case("student_t3", "2*log(1 + x**2/3)", law(stats.t(3)), ((-1e4, 1e4),), (0,), (1,)),
    Case("cauchy", "log(1 + x**2)", law(stats.cauchy()), ((-1e6, 1e6),), (0,), (1,)),
    Case("laplace", "Abs(x)", law(stats.laplace()), ((-25, 25),), (0,), (1,)),
    Case("logistic", "x + 2*log(1 + exp(-x))", law(stats.logistic()), ((-30, 30),), (0,), (1,)),
    Case(
        "double_well",
        "x**4/4 - x**2",
        by_quad(lambda x: -(x**4 / 4 - x**2), -INF, INF),
        ((-6, 6),),
        (0,),
        (1,),
    ),
    Case(
        "mixture_1d",
        "-log(0.3*exp(-(x + 2)**2/2) + 0.7*exp(-(x - 2)**2/(2*0.5**2))/0.5)",
        _mixture_1d,
        ((-10, 8),),
        (0,),
        (1,),
    ),
    Case(
        "student_t5_lgamma",
        "lgamma(5/2) - lgamma(3) + log(sqrt(5*pi)) + 3*log(1 + x**2/5)",
        law(stats.t(5)),
        ((-1e4, 1e4),),
        (0,),
        (1,),
        note=NEEDS_LGAMMA + " (normalising constant written out)",
    ),
    # --- 1-D, on x > 0 or an interval, the support by a log or a Piecewise ---------------------
    Case("gamma3", "x - 2*log(x)", law(stats.gamma(3)), ((0, 40),), (2,), (1.5,), support=positive),
    Case(
        "beta_2_5",
        "-log(x) - 4*log(1 - x)",
        law(stats.beta(2, 5)),
        ((0, 1),),
        (0.2,),
        (0.2,),
        support=lambda z: (z[:, 0] > 0) & (z[:, 0] < 1),
    ),
    Case(
        "lognormal",
        "log(x) + (log(x))**2/2",
        law(stats.lognorm(1)),
        ((0, 1000),),
        (0.5,),
        (0.5,),
        support=positive,
    ),
    Case(
        "weibull_1.5",
        "x**(3/2) - log(x)/2",
        law(stats.weibull_min(1.5)),
        ((0, 15),),
        (0.5,),
        (0.5,),
        support=positive,
    ),
    Case(
        "inverse_gamma",
        "4*log(x) + 2/x",
        law(stats.invgamma(3, scale=2)),
        ((0, 1e4),),
        (0.5,),
        (0.5,),
        support=positive,
    ),
    Case(
        "exponential",
        "Piecewise((2*x, x > 0))",
        law(stats.expon(scale=0.5)),
        ((0, 30),),
        (0,),
        (0.5,),
        support=positive,
    ),
    Case(
        "truncated_normal",
        "Piecewise((x**2/2, x > 1))",
        law(stats.truncnorm(1, INF)),
        ((1, 12),),
        (1,),
        (0.5,),
        support=lambda z: z[:, 0] > 1,
    ),
    Case(
        "von_mises",
        "Piecewise((-4*cos(x), (x > -pi) & (x <= pi)))",
        _von_mises,
        ((-math.pi, math.pi),),
        (0,),
        (0.5,),
        support=lambda z: (z[:, 0] > -math.pi) & (z[:, 0] <= math.pi),
    ),
    Case(
        "uniform_01",
        "Piecewise((0, (x > 0) & (x < 1)))",
        law(stats.uniform(0, 1)),
        ((0, 1),),
        (0.5,),
        (0.3,),
        support=lambda z: (z[:, 0] > 0) & (z[:, 0] < 1),
    ),
    Case(
        "gamma_shape_lgamma",
        "Piecewise((5*lgamma(a) - 3*(a - 1) + a, a > 0))",
        by_quad(lambda a: -(5 * special.gammaln(a) - 3 * (a - 1) + a), 0, INF),
        ((0, 30),),
        (1.5,),
        (0.7,),
        support=positive,
        note=NEEDS_LGAMMA + " (posterior of a gamma shape: 5 draws, Σ ln x = 3, Exp(1) prior)",
    ),
    # --- 2-D --------------------------------------------------------------------------------
    Case(
        "corr_gauss_0.9",
        "(x**2 - 1.8*x*y + y**2)/(2*(1 - 0.81))",
        lambda z: stats.multivariate_normal([0, 0], [[1, 0.9], [0.9, 1]]).logpdf(z),
        ((-7, 7), (-7, 7)),
        (0, 0),
        (1, 1),
    ),
    Case(
        "banana",
        "x**2/2 + (y - x**2)**2/2",
        lambda z: stats.norm.logpdf(z[:, 0]) + stats.norm.logpdf(z[:, 1] - z[:, 0] ** 2),
        ((-7, 7), (-7, 55)),
        (0, 1),
        (1, 2),
        limits=(0, (-12, 12), lambda x: (x * x - 12, x * x + 12)),
    ),
    Case(
        "student_t3_2d",
        "5*log(1 + (x**2 + y**2)/3)/2",
        lambda z: stats.multivariate_t(np.zeros(2), np.eye(2), df=3).logpdf(z),
        ((-1e3, 1e3), (-1e3, 1e3)),
        (0, 0),
        (1, 1),
    ),
    Case(
        "skew_normal_2d",
        "(x**2 + y**2)/2 - log(1 + erf((2*x + 2*y)/sqrt(2)))",
        _skew_normal_2d,
        ((-6, 6), (-6, 6)),
        (0, 0),
        (1, 1),
    ),
    Case(
        "disk",
        "Piecewise((0, x**2 + y**2 < 1))",
        lambda z: np.full(len(z), -math.log(math.pi)),
        ((-1, 1), (-1, 1)),
        (0, 0),
        (0.5, 0.5),
        support=lambda z: z[:, 0] ** 2 + z[:, 1] ** 2 < 1,
        limits=(0, (-1, 1), lambda x: (-math.sqrt(1 - x * x), math.sqrt(1 - x * x))),
    ),
    Case(
        "normal_gamma",
        "x - 2*log(x) + x*y**2/2 - log(x)/2",
        _normal_gamma,
        ((0, 40), (-60, 60)),
        (2, 0),
        (1.5, 0.5),
        support=positive,
        limits=(0, (0, INF), lambda x: (-INF, INF)),
    ),
    Case(
        "mixture_2d",
        "-log(exp(-((x - 2)**2 + y**2)/2) + exp(-((x + 2)**2 + y**2)/2))",
        _mixture_2d,
        ((-9, 9), (-7, 7)),
        (0, 0),
        (1, 1),
    ),
    Case(
        "funnel",
        "y**2/18 + x**2*exp(-y)/2 + y/2",
        _funnel,
        ((-3000, 3000), (-13, 13)),
        (0, 0),
        (0.05, 1),
        note="the TV grid cannot resolve the neck (x sd e^(y/2) < 0.01 for y < -9): TV approximate",
        limits=(1, (-40, 40), lambda y: (-12 * math.exp(y / 2), 12 * math.exp(y / 2))),
    ),
]


# --- the grid ------------------------------------------------------------------------------


def axis(
    lo: float, hi: float, centre: float, scale: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """n points x = c + s·sinh(u), u uniform over [asinh((lo−c)/s), asinh((hi−c)/s)], and their
    trapezoid weights in x (dx/du = s·cosh u): fine near c, wide in the tails."""
    u = np.linspace(math.asinh((lo - centre) / scale), math.asinh((hi - centre) / scale), n)
    w = np.full(n, u[1] - u[0])
    w[[0, -1]] /= 2
    return centre + scale * np.sinh(u), w * scale * np.cosh(u)


def grid(case: Case, box: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Points (M, D) over ``box`` and their quadrature weights (M,)."""
    n = GRID_1D if case.dim == 1 else GRID_2D
    axes = [
        axis(lo, hi, c, s, n) for (lo, hi), c, s in zip(box, case.centre, case.scale, strict=True)
    ]
    if case.dim == 1:
        return axes[0][0][:, None], axes[0][1]
    (gx, wx), (gy, wy) = axes
    X, Y = np.meshgrid(gx, gy, indexing="ij")
    return np.stack([X.ravel(), Y.ravel()], 1), np.outer(wx, wy).ravel()


# --- one fit, scored -----------------------------------------------------------------------


@dataclass
class Score:
    """One case at one seed. kl: KL(q‖p) over the draws inside the support, nats; outside: the
    fraction of draws outside; tv: ½∫|p − q| plus the missed mass; grid_p, grid_q: the mass of p
    and of q the grid holds."""

    case: str
    seed: int
    parses: bool = True
    kl: float = math.nan
    kl_se: float = math.nan
    outside: float = math.nan
    nonfinite_draws: int = 0
    tv: float = math.nan
    grid_p: float = math.nan
    grid_q: float = math.nan
    steps: int = 0
    stopped: str | None = None
    message: str = ""
    fit_s: float = math.nan
    score_s: float = math.nan
    error: str = ""

    @property
    def passes(self) -> bool:
        return self.kl <= KL_PASS and self.outside <= OUTSIDE_PASS


def first_words(text: str, n: int = 12) -> str:
    return " ".join(text.split()[:n])


def score_flow(case: Case, flow, seed: int, row: Score) -> None:
    """Fill ``row``'s KL, outside, TV from the fitted flow (float64 throughout)."""
    q = copy.deepcopy(flow).to("cpu").double().eval()
    with torch.no_grad():
        z, log_q = q.rsample(DRAWS, torch.Generator().manual_seed(10_000 + seed))
    z, log_q = z.numpy(), log_q.numpy()
    ok = np.isfinite(z).all(1) & np.isfinite(log_q)
    row.nonfinite_draws = int((~ok).sum())
    z, log_q = z[ok], log_q[ok]
    log_p = true_log_p(case, z)
    inside = case.support(z)
    row.outside = float(1 - inside.mean())
    d = log_q[inside] - log_p[inside]
    row.kl = float(d.mean())
    row.kl_se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan

    lo, hi = np.quantile(z, 1e-4, axis=0), np.quantile(z, 1 - 1e-4, axis=0)
    box = [(min(a, c), max(b, d)) for (a, b), c, d in zip(case.box, lo, hi, strict=True)]
    points, w = grid(case, box)
    p = np.exp(true_log_p(case, points))
    qd = np.exp(log_prob(q, torch.from_numpy(points)).numpy())
    row.grid_p, row.grid_q = float(w @ p), float(w @ qd)
    missed = max(0.0, 1 - row.grid_p) + max(0.0, 1 - row.grid_q)
    row.tv = float(0.5 * (w @ np.abs(p - qd)) + 0.5 * missed)


def run_case(case: Case, seed: int, iters: int | None) -> Score:
    row = Score(case.name, seed)
    try:
        energy = load_energy(case.text)
    except NfcliError as e:
        row.parses, row.error = False, first_words(str(e), 14)
        return row
    config = FitConfig(seed=seed) if iters is None else FitConfig(seed=seed, iters=iters)
    t0 = time.perf_counter()
    try:
        result = fit(energy, config)
    except NfcliError as e:
        row.error = "fit refused: " + first_words(str(e), 20)
        return row
    except Exception as e:  # nfcli's own bug: reported as a row, the other cases go on
        row.error = f"fit crashed: {type(e).__name__}: {first_words(str(e), 12)}"
        return row
    row.fit_s = time.perf_counter() - t0
    row.steps, row.stopped, row.message = result.steps, result.stopped, first_words(result.message)
    t0 = time.perf_counter()
    score_flow(case, result.flow, seed, row)
    row.score_s = time.perf_counter() - t0
    return row


def median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


def markdown(case: Case, rows: list[Score]) -> str:
    """One table row: median over seeds, the worst seed's KL, seeds passing."""
    head = f"| {case.name} | {case.dim} | `{case.text}` "
    if not rows[0].parses:
        return head + f"| does not parse | | | | | | {rows[0].error} |"
    if any(r.error for r in rows):
        return head + f"| {' / '.join(r.error for r in rows if r.error)} | | | | | | |"
    k = int(np.argsort([r.kl for r in rows])[len(rows) // 2])  # the median seed, for its SE
    worst = max(rows, key=lambda r: r.kl if not math.isnan(r.kl) else math.inf)
    notes = []
    stopped = [r for r in rows if r.stopped]
    if stopped:
        notes.append(f"{len(stopped)} stopped ({stopped[0].stopped}): {stopped[0].message}")
    if any(r.outside == 1 for r in rows):
        notes.append(f"{sum(r.outside == 1 for r in rows)} with every draw outside (KL: none)")
    if any(r.nonfinite_draws for r in rows):
        notes.append(f"{sum(r.nonfinite_draws for r in rows)} non-finite draws")
    return (
        head + f"| {median([r.kl for r in rows]):.4f} ± {rows[k].kl_se:.4f} "
        f"| {worst.kl:.4f} (seed {worst.seed}) | {median([r.tv for r in rows]):.4f} "
        f"| {median([r.outside for r in rows]):.2g} | {sum(r.passes for r in rows)}/{len(rows)} "
        f"| {median([r.fit_s for r in rows]):.0f} | {'; '.join(notes)} |"
    )


HEADER = (
    "| case | D | U as typed | KL(q‖p) median ± se | worst KL | TV median | outside median "
    "| pass (seeds) | fit s | note |\n|---|---|---|---|---|---|---|---|---|---|"
)


# --- the truths' own check -----------------------------------------------------------------


@dataclass
class TruthCheck:
    case: str
    quad_mass: float
    grid_mass: float
    u_spread: float = math.nan  # max − min of U + ln p over the box's grid where p is not tiny
    u_nonfinite_inside: int = 0  # grid points inside where U is not finite although p is not tiny
    u_finite_outside: int = 0  # points outside the support where U is finite
    parses: bool = True

    @property
    def ok(self) -> bool:
        same_law = not self.parses or (
            self.u_spread <= 1e-5 and self.u_finite_outside == 0 and self.u_nonfinite_inside == 0
        )
        return abs(self.quad_mass - 1) <= CHECK_TOL and same_law


def quad_mass(case: Case) -> float:
    """∫ p over the support by quad (1-D, split at the box's ends) or dblquad (2-D)."""
    if case.dim == 1:
        f = lambda t: math.exp(true_log_p(case, np.array([[t]]))[0])  # noqa: E731
        (lo, hi), c, scale = case.box[0], case.centre[0], case.scale[0]
        # split at c ± s·sinh(k): quad over one wide piece can miss a narrow peak (Cauchy)
        cuts = [c + scale * math.sinh(k) for k in range(-20, 21)]
        cuts = [-INF, lo, *(t for t in cuts if lo < t < hi), hi, INF]
        pieces = list(pairwise(cuts))
        return sum(
            integrate.quad(f, a, b, limit=500, epsabs=1e-10, epsrel=1e-10)[0] for a, b in pieces
        )
    outer, (a, b), inner = case.limits or (0, (-INF, INF), lambda _: (-INF, INF))

    def f(v: float, o: float) -> float:  # dblquad: inner variable first
        point = [o, v] if outer == 0 else [v, o]
        return math.exp(true_log_p(case, np.array([point]))[0])

    lo_f = lambda o: inner(o)[0]  # noqa: E731
    hi_f = lambda o: inner(o)[1]  # noqa: E731
    return integrate.dblquad(f, a, b, lo_f, hi_f, epsabs=1e-9, epsrel=1e-9)[0]


def check_truth(case: Case) -> TruthCheck:
    points, w = grid(case, case.box)
    log_p = true_log_p(case, points)
    c = TruthCheck(case.name, quad_mass(case), float(w @ np.exp(log_p)))
    try:
        energy = load_energy(case.text)
    except NfcliError:
        c.parses = False
        return c
    with torch.no_grad():
        u = energy(torch.from_numpy(points)).double().numpy()
    inside = case.support(points)
    heavy = inside & (log_p > log_p[inside].max() - 25)  # where exp(−U) is representable
    c.u_nonfinite_inside = int((~np.isfinite(u[heavy])).sum())
    with np.errstate(invalid="ignore"):  # U = ±∞ where ln p = −∞: masked out
        s = (u + log_p)[heavy & np.isfinite(u)]
    c.u_spread = float(s.max() - s.min())
    rng = np.random.default_rng(0)
    wide = rng.normal(0, 10, (4000, case.dim))  # and the TV grid's points: on the box's edges
    probe = np.concatenate([points[~inside][:4000], wide[~case.support(wide)]])
    if len(probe):
        with torch.no_grad():
            u_out = energy(torch.from_numpy(probe)).double().numpy()
        c.u_finite_outside = int(np.isfinite(u_out).sum())
    return c


# --- the command ---------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iters", type=int, default=None, help="override FitConfig.iters (smoke)")
    ap.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="JSON of every seed")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--check-truth", action="store_true", help="check the truths; no fits")
    ap.add_argument(
        "--wall-slope",
        type=float,
        default=None,
        help="nfcli.train.WALL_SLOPE for this run (the hard walls' rise; to measure its choice)",
    )
    args = ap.parse_args()
    if args.wall_slope is not None:
        nfcli.train.WALL_SLOPE = args.wall_slope
    cases = CASES
    if args.only:
        names = args.only.split(",")
        unknown = [n for n in names if n not in {c.name for c in CASES}]
        if unknown:
            ap.error(f"no case named {unknown}; --list shows them")
        cases = [c for c in CASES if c.name in names]
    torch.set_num_threads(1)

    if args.list:
        for c in cases:
            print(f"{c.name:20s} {c.dim}-D  {c.text}" + (f"   ({c.note})" if c.note else ""))
        return

    if args.check_truth:
        print(
            "| case | ∫p by quad − 1 | ∫p on the TV grid − 1 | max − min of U + ln p "
            "| U non-finite inside | U finite outside | ok |\n|---|---|---|---|---|---|---|"
        )
        bad = 0
        for c in cases:
            t0 = time.perf_counter()
            t = check_truth(c)
            print(f"  ({c.name}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            bad += not t.ok
            same = (
                f"{t.u_spread:.1e} | {t.u_nonfinite_inside} | {t.u_finite_outside}"
                if t.parses
                else "does not parse | | "
            )
            print(
                f"| {c.name} | {t.quad_mass - 1:.1e} | {t.grid_mass - 1:.1e} | {same} "
                f"| {'yes' if t.ok else 'NO'} |",
                flush=True,
            )
        raise SystemExit(1 if bad else 0)

    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"nfcli {nfcli.__version__}, commit {nfcli_commit()}; torch {torch.__version__}")
    print(
        f"FitConfig(seed=s{'' if args.iters is None else f', iters={args.iters}'}); "
        f"pass: KL(q‖p) ≤ {KL_PASS} and outside ≤ {OUTSIDE_PASS}\n"
    )
    print(HEADER)
    results = []
    t_all = time.perf_counter()
    for c in cases:
        rows = []
        for seed in seeds:
            row = run_case(c, seed, args.iters)
            rows.append(row)
            if not row.parses:
                break  # the same text at every seed
        print(markdown(c, rows), flush=True)
        results.append(
            {
                "case": c.name,
                "dim": c.dim,
                "text": c.text,
                "note": c.note,
                "seeds": [asdict(r) | {"passes": r.passes} for r in rows],
            }
        )
    scored = [r for r in results if r["seeds"][0]["parses"]]
    passing = sum(all(s["passes"] for s in r["seeds"]) for r in scored)
    total = time.perf_counter() - t_all
    print(
        f"\n{passing} of {len(scored)} parsed cases pass at every seed; "
        f"{len(results) - len(scored)} do not parse; {total / 60:.1f} min."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": shlex.join(sys.argv),
                "commit": nfcli_commit(),
                "iters": args.iters,
                "seeds": seeds,
                "draws": DRAWS,
                "kl_pass": KL_PASS,
                "outside_pass": OUTSIDE_PASS,
                "minutes": total / 60,
                "cases": results,
            },
            indent=1,
            allow_nan=True,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
