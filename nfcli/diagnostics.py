"""How far to trust a fit: importance sampling with q as the proposal (ELBO, ln Z, ESS, PSIS k̂),
grid quadrature in 1-D and 2-D (ln Z, hence the true KL(q‖p), and KL(p‖q) and TV with q's exact
density), and the verdict that weighs them.

KL(q‖p) = E_q[ln q(z) + U(z)] + ln Z = ln Z − ELBO. In 1-D and 2-D, ln Z is computed almost
exactly by the midpoint rule on a grid, ln Z ≈ logsumexp(−U(grid)) + ln(cell volume), so KL is
known up to the Monte-Carlo error of the ELBO, which is reported with it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nfcli.energy import Energy
from nfcli.errors import NfcliError
from nfcli.flows import Flow

if TYPE_CHECKING:  # nfcli.report imports nfcli.train, which imports this module
    from nfcli.lost_modes import ModeSearch
    from nfcli.report import TrustReport

Window = tuple[tuple[float, float], ...]  # (lo, hi) per variable: one or two of them
KHAT_GOOD, KHAT_TRUST = 0.5, 0.7  # PSIS: k̂ < 0.5 good, ≤ 0.7 usable, above: do not trust
QUADRATURE_N = {1: 20_000, 2: 800}  # cells per axis for ln Z: 20,000 in 1-D, 800² in 2-D
COMPARE_N = {1: 20_000, 2: 300}  # cells per axis for KL(p‖q) and TV, which invert the flow
# compare_on_grid reuses a known grid of ln q where p and q each have at most this mass around it
RING_MASS = 1e-6


@dataclass
class Grid:
    """ln p on the cell midpoints of ``window`` (n cells per axis), with ln Z and the mass at the
    edges."""

    window: Window
    log_p: Tensor  # (n,) in 1-D; (n, n) in 2-D: ln p(x_i, y_j) = −U − ln Z, indexed [j, i]
    log_z: float
    edge_mass: float  # fraction of the grid's mass in its outermost 2% on each side


@dataclass
class LogQGrid:
    """ln q on the n×n cell midpoints of a 2-D ``window``: (n, n), float64, on the CPU, indexed
    [j, i] (rows are y). Computed once, for density.png, and reused by ``compare_on_grid``."""

    window: Window
    n: int
    log_q: Tensor


def grid_points(window: Window, n: int | tuple[int, ...]) -> Tensor:
    """The cell midpoints of ``window``, n per axis (or n[d] along axis d), as (∏n, D) points,
    float64; in 2-D row by row (rows are y)."""
    ns = n if isinstance(n, tuple) else (n,) * len(window)
    axes = [
        lo + (torch.arange(k, dtype=torch.float64) + 0.5) * (hi - lo) / k
        for (lo, hi), k in zip(window, ns, strict=True)
    ]
    if len(axes) == 1:
        return axes[0][:, None]
    xs, ys = axes
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def cell_volume(window: Window, n: int | tuple[int, ...]) -> float:
    """The volume of one of the n^D cells of ``window`` (n[d] along axis d, for a tuple)."""
    ns = n if isinstance(n, tuple) else (n,) * len(window)
    return math.prod((hi - lo) / k for (lo, hi), k in zip(window, ns, strict=True))


@torch.no_grad()
def quadrature(energy: Energy, window: Window, n: int | None = None, chunk: int = 1 << 18) -> Grid:
    """ln Z = ln ∫ exp(−U) over ``window`` (1-D or 2-D) by the midpoint rule on n cells per axis
    (float64; n defaults to QUADRATURE_N): ln Z ≈ logsumexp(−U(cells)) + ln(cell volume)."""
    dim = len(window)
    n = n or QUADRATURE_N[dim]
    pts = grid_points(window, n)
    u = torch.cat([energy(pts[i : i + chunk]).double() for i in range(0, len(pts), chunk)])
    neg_u = torch.where(torch.isnan(u), -math.inf, -u)
    log_z = (torch.logsumexp(neg_u, 0) + math.log(cell_volume(window, n))).item()
    p = torch.softmax(neg_u, 0).reshape((n,) * dim)
    band = max(1, n // 50)
    inner = p[(slice(band, -band),) * dim].sum().item()
    return Grid(window, neg_u.reshape((n,) * dim) - log_z, log_z, max(0.0, 1.0 - inner))


def choose_window(samples: Tensor, energy: Energy, n: int | None = None, tol: float = 1e-6) -> Grid:
    """A grid (1-D or 2-D, as the samples) that holds the target's mass: start from the samples'
    extent padded by half its span, and widen it around its centre while the edges hold mass
    > tol: in 2-D ×1.5, up to 6 times; in 1-D, where a grid is cheap and a collapsed q's samples
    may span a hair of p's range, ×4 up to 12 times, then zoom in to where the mass is
    (``_zoom_1d``) so that the cells are fine there."""
    dim = samples.shape[-1]
    grow, tries = (4.0, 13) if dim == 1 else (1.5, 7)
    s = samples.double()
    lo, hi = torch.quantile(s, 0.0005, dim=0), torch.quantile(s, 0.9995, dim=0)
    span = (hi - lo).clamp_min(1e-3)
    lo, hi = lo - 0.5 * span, hi + 0.5 * span
    for _ in range(tries):
        window: Window = tuple((a, b) for a, b in zip(lo.tolist(), hi.tolist(), strict=True))
        g = quadrature(energy, window, n)
        if g.edge_mass <= tol:
            break
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * grow
        lo, hi = mid - half, mid + half
    return _zoom_1d(g, energy, n, tol) if dim == 1 else g


def _zoom_1d(g: Grid, energy: Energy, n: int | None, tol: float, tail: float = 1e-12) -> Grid:
    """A 1-D grid on the range that holds all but ``tail`` of ``g``'s mass, padded by half its
    span, when that is narrower than ``g``'s window and its edges still hold at most ``tol``."""
    if not math.isfinite(g.log_z) or g.edge_mass > tol:
        return g
    (x0, x1), cells = g.window[0], g.log_p.numel()
    cdf = torch.cumsum(g.log_p.exp() * (x1 - x0) / cells, 0)
    i0 = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
    i1 = int(torch.searchsorted(cdf, torch.tensor(1 - tail, dtype=cdf.dtype)))
    a, b = x0 + i0 * (x1 - x0) / cells, x0 + (min(i1, cells - 1) + 1) * (x1 - x0) / cells
    a, b = max(x0, a - 0.5 * (b - a)), min(x1, b + 0.5 * (b - a))
    if b - a >= 0.5 * (x1 - x0):
        return g
    zoomed = quadrature(energy, ((a, b),), n)
    return zoomed if zoomed.edge_mass <= tol and math.isfinite(zoomed.log_z) else g


def log_prob(flow: Flow, points: Tensor) -> Tensor:
    """ln q(x) of a fitted flow at each row of ``points``, exact, computed in float64."""
    return flow.float64().log_prob(points.double())


# --- importance sampling with q as the proposal ---------------------------------------------------


def pareto_khat(log_w: Tensor) -> float:
    """Shape k̂ of a generalized Pareto fit to the largest importance weights (PSIS; Vehtari et al.,
    JMLR 2024). See ``khat_verdict`` for what its values mean."""
    return psis(log_w)[1]


def psis(log_w: Tensor) -> tuple[Tensor, float]:
    """Pareto-smoothed importance sampling (Vehtari et al., JMLR 2024): the M = ⌈min(0.2 S, 3√S)⌉
    largest of S weights are fitted by a generalized Pareto distribution (Zhang & Stephens' 2009
    empirical-Bayes estimate, with the weak prior that pulls k̂ towards 0.5) and replaced by its
    expected order statistics, capped at the largest raw weight. Returns the smoothed log weights
    (non-finite ones dropped) and k̂; a failed fit, or one weight that outweighs all the others
    (no tail to fit), gives k̂ = ∞ and the raw weights."""
    lw = log_w.double()
    lw = lw[torch.isfinite(lw)]
    S = len(lw)
    M = math.ceil(min(0.2 * S, 3 * math.sqrt(S)))
    if M < 5:
        return lw, math.inf
    top = lw.max()
    lw = lw - top
    order = torch.argsort(lw)
    cutoff = lw[order[-(M + 1)]]
    tail = order[-M:]  # ascending
    x = torch.exp(lw[tail]) - torch.exp(cutoff)  # exceedances over the cutoff
    n = len(x)
    if float(x[-1]) <= 1e-12:
        return lw + top, 0.0  # the M largest weights are all equal (to rounding): there is no tail
    if float(x[int(n / 4 + 0.5) - 1]) <= 0:
        # A quarter of the tail ties with the cutoff. If the largest weight is within 1% of the
        # cutoff, the weights are equal up to float32 rounding of U and ln q: there is no tail.
        # If it rises further, one weight (or a handful) outweighs ties that are rounding or
        # underflow (by e^745 in float64): there is no tail to fit, and not a good one.
        return lw + top, (0.0 if float(x[-1]) < 0.01 else math.inf)
    m = 30 + int(math.sqrt(n))
    b = 1 - torch.sqrt(m / (torch.arange(1, m + 1, dtype=torch.float64) - 0.5))
    b = b / (3 * x[int(n / 4 + 0.5) - 1]) + 1 / x[-1]
    k = torch.log1p(-b[:, None] * x).mean(1)
    weights = torch.softmax(n * (torch.log(-b / k) - k - 1), 0)
    b_post = (b * weights).sum()
    k_post = torch.log1p(-b_post * x).mean()
    sigma = float(-k_post / b_post)
    khat = float((n * k_post + 10 * 0.5) / (n + 10))
    if not (math.isfinite(khat) and sigma > 0):
        return lw + top, math.inf  # a failed fit is reported as untrustworthy
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    q = -torch.log1p(-p) if abs(khat) < 1e-12 else torch.expm1(-khat * torch.log1p(-p)) / khat
    smoothed = lw.clone()
    smoothed[tail] = torch.log(sigma * q + torch.exp(cutoff)).clamp(max=0.0)
    return smoothed + top, khat


@dataclass
class ImportanceSampling:
    """ln Z ≈ ln mean(w), w = p̃/q = exp(−U − ln q) Pareto-smoothed, with its Monte-Carlo standard
    error (delta method), the Kish effective sample size as a fraction, (Σw)²/(S Σw²), k̂, and the
    ELBO = mean(ln w) with its standard error (−∞ when U or ln q is not finite at some draw: q
    has mass where p has none), and ``elbo_inside``, mean(ln w) over the draws where it is finite
    (its standard error is ``elbo_se``)."""

    log_z: float
    log_z_se: float
    ess_fraction: float
    khat: float
    elbo: float
    elbo_se: float
    samples: int
    nonfinite: int  # samples where U or ln q was not finite (dropped)
    note: str = ""  # why k̂ or ln Z is not available (k̂ = ∞ or ln Z = NaN), else ""
    elbo_inside: float = math.nan  # mean ln w over the finite draws (= elbo when all are)


@torch.no_grad()
def draw_weighted(
    flow: Flow,
    energy: Energy,
    n: int,
    generator: torch.Generator | None = None,
    chunk: int = 65_536,
) -> tuple[Tensor, Tensor]:
    """n fresh samples z ~ q and their log importance weights ln w = −U(z) − ln q(z) (float64),
    drawn in chunks where the flow is (memory stays bounded) and returned on the CPU."""
    zs, log_w = [], []
    for i in range(0, n, chunk):
        z, log_q = flow.rsample(min(chunk, n - i), generator)
        zs.append(z.cpu())
        log_w.append((-energy(z) - log_q).double().cpu())
    return torch.cat(zs), torch.cat(log_w)


def importance_log_weights(flow: Flow, energy: Energy, n: int = 100_000) -> Tensor:
    """ln w = −U(z) − ln q(z) for n fresh samples z ~ q (float64); mean(ln w) is the ELBO."""
    return draw_weighted(flow, energy, n)[1]


def importance_sampling(flow: Flow, energy: Energy, n: int = 100_000) -> ImportanceSampling:
    return importance_from_log_weights(importance_log_weights(flow, energy, n))


def importance_from_log_weights(log_w: Tensor) -> ImportanceSampling:
    """ln Z from Pareto-smoothed weights (one lucky weight cannot inflate it) with the delta-method
    error; the ESS from the raw weights; k̂ from the fit to their tail; the ELBO from all of them."""
    finite = torch.isfinite(log_w)
    S, nonfinite = int(finite.sum()), int((~finite).sum())
    raw = log_w[finite].double()
    inside = float(raw.mean()) if S else math.nan
    elbo = inside if nonfinite == 0 and S else -math.inf
    elbo_se = float(raw.std() / math.sqrt(S)) if S > 1 else math.nan
    if S < 2:
        note = f"U or ln q is infinite or NaN at {nonfinite:,} of {S + nonfinite:,} draws of q"
        return ImportanceSampling(
            math.nan, math.nan, 0.0, math.inf, elbo, elbo_se, S, nonfinite, note, inside
        )
    smoothed, khat = psis(raw)
    w = torch.exp(smoothed - smoothed.max())
    mean = w.mean()
    log_z = float(torch.log(mean) + smoothed.max())
    se = float(w.std() / (mean * math.sqrt(S)))
    v = torch.exp(raw - raw.max())
    ess = float(v.sum() ** 2 / (v * v).sum() / S)
    note = ""
    if ess * S < 2:  # fewer than two effective draws: whatever k̂ the fit gave means nothing
        khat = math.inf
    if not math.isfinite(khat):
        top = float(v.max() / v.sum())
        note = (
            f"one draw carries {top:.1%} of the weight (ESS {ess * S:.1f} of {S:,} draws)"
            if ess * S < 2 or top > 0.5
            else f"the Pareto fit to the largest of {S:,} weights failed"
        )
    return ImportanceSampling(log_z, se, ess, khat, elbo, elbo_se, S, nonfinite, note, inside)


@dataclass
class LargeWeights:
    """Where q's largest importance weights sit: at q's outer edge ("tails": q's tails are lighter
    than p's) or inside q's bulk ("mode": p has a mode or region there that q underweights)."""

    cause: str  # "tails" or "mode"
    edge_share: float  # share of the tail weights' excess beyond q's 99th-percentile radius
    radius_q99: float  # the 99th percentile of the draws' Mahalanobis radius under q
    heavy: int  # how many of the largest weights were looked at (PSIS's M)
    centre: Tensor  # q's sample mean μ (D,)
    far: Tensor  # up to 20 of the heaviest draws beyond the edge radius (n, D)


def locate_large_weights(z: Tensor, log_w: Tensor, edge: float = 0.99) -> LargeWeights:
    """Tails or a missing mode, from draws z ~ q (S, D) and their log weights (S,).

    Each draw's Mahalanobis radius r = ‖L⁻¹(z − μ)‖ under q's sample mean μ and covariance
    Σ = LLᵀ; the heavy draws are PSIS's tail, the M = ⌈min(0.2 S, 3√S)⌉ largest weights, each
    counted by its excess w − w₍M+1₎ over the cutoff (what the Pareto fit, hence k̂, sees). When
    at least half of that excess lies beyond the ``edge`` quantile of r, the weights grow towards
    q's edge: "tails"; else they peak inside it: "mode"."""
    finite = torch.isfinite(log_w)
    x, lw = z[finite].double(), log_w[finite].double()
    S, D = x.shape
    centred = x - x.mean(0)
    cov = (centred.T @ centred / max(S - 1, 1)).reshape(D, D)
    jitter = 1e-12 * float(cov.diagonal().mean().clamp_min(1e-300)) * torch.eye(D, dtype=cov.dtype)
    L = torch.linalg.cholesky(cov + jitter)
    r = torch.linalg.solve_triangular(L, centred.T, upper=False).norm(dim=0)
    r_edge = float(torch.quantile(r, edge))
    M = math.ceil(min(0.2 * S, 3 * math.sqrt(S)))
    order = torch.argsort(lw, descending=True)[: M + 1]
    w = torch.exp(lw[order] - lw[order[0]])
    excess, r_tail = w[:M] - w[M], r[order[:M]]  # what PSIS's Pareto fit sees
    share = float(excess[r_tail > r_edge].sum() / excess.sum().clamp_min(1e-300))
    beyond = order[:M][r_tail > r_edge][:20]
    cause = "tails" if share >= 0.5 else "mode"
    return LargeWeights(cause, share, r_edge, M, x.mean(0), x[beyond])


@torch.no_grad()
def tail_exponent(energy: Energy, centre: Tensor, far: Tensor) -> float:
    """How fast U grows along the rays from q's centre μ through the far draws z: U ~ rᵃ, with
    a = log₂[(U(μ + 4d) − U(μ + 2d)) / (U(μ + 2d) − U(μ + d))], d = z − μ, the median over the
    draws (NaN where U does not grow). a ≈ 2 for Gaussian tails; a < 2 for heavier ones
    (a → 0 for power laws such as Student-t, 1 for exponential tails), which nfcli's layers on a
    Gaussian base cannot reach: far out every one of them is affine (planar, radial, couplings
    with bounded scales, splines with identity tails)."""
    if len(far) == 0:
        return math.nan
    d = far - centre
    u = [energy((centre + t * d).to(torch.get_default_dtype())).double() for t in (1, 2, 4)]
    with torch.no_grad():
        ratio = (u[2] - u[1]) / (u[1] - u[0])
    a = torch.log2(ratio[torch.isfinite(ratio) & (ratio > 0) & (u[1] > u[0])])
    return float(a.median()) if len(a) else math.nan


def khat_verdict(khat: float) -> str:
    """PSIS's reading of k̂: < 0.5 good; 0.5–0.7 usable; above 0.7 (or no fit) do not trust."""
    if not math.isfinite(khat) or khat > KHAT_TRUST:
        return "do not trust"
    return "good" if khat < KHAT_GOOD else "usable"


@torch.no_grad()
def compare_on_grid(
    flow: Flow,
    energy: Energy,
    window: Window,
    log_z: float,
    n: int | None = None,
    known: LogQGrid | None = None,
) -> tuple[float, float]:
    """KL(p‖q) = ∫ p (ln p − ln q) and the total-variation distance ½∫|p − q| by the midpoint rule
    on n cells per axis of a 1-D or 2-D ``window`` (n defaults to COMPARE_N), with q's exact
    density (the flow's inverse) and p = exp(−U − ln Z).

    ``known``: ln q already computed on a 2-D grid (density.png's); where ``_compare_around`` can
    use it, the flow is inverted only on the cells around it."""
    n = n or COMPARE_N[len(window)]
    if known is not None:
        around = _compare_around(flow, energy, window, log_z, n, known)
        if around is not None:
            return around
    pts = grid_points(window, n).to(flow.base.loc.dtype)
    sums = _kl_tv_sums(_log_p(energy, pts, log_z), flow.log_prob(pts).double())
    kl_pq, tv = sums * cell_volume(window, n)
    return float(kl_pq), float(tv)


def _compare_around(
    flow: Flow, energy: Energy, window: Window, log_z: float, n: int, known: LogQGrid
) -> tuple[float, float] | None:
    """``compare_on_grid`` over the box that holds ``window`` and ``known.window``: on ``known``'s
    cells with its ln q, and on its ``ring`` (the rest of the box) on cells no wider than n per
    axis on ``window``, where alone the flow is inverted. None (use n per axis on ``window``)
    unless ``known``'s cells are no wider than those, the ring has fewer than n² cells, and p and
    q each hold at most RING_MASS in the ring: then both vanish where the two grids meet, and the
    midpoint rule on ``known``'s cells is as exact as on one grid around all the mass (its error
    grows where an integrand is cut off at the edge of its grid)."""
    if len(window) != 2:
        return None
    widths = [(hi - lo) / n for lo, hi in window]
    if any((hi - lo) / known.n > w for (lo, hi), w in zip(known.window, widths, strict=True)):
        return None
    box = tuple(
        (min(a[0], b[0]), max(a[1], b[1])) for a, b in zip(window, known.window, strict=True)
    )
    blocks = [(block, _cells(block, widths)) for block in ring(box, known.window)]
    if sum(math.prod(cells) for _, cells in blocks) >= n**2:
        return None
    dtype = flow.base.loc.dtype
    pts = [grid_points(block, cells).to(dtype) for block, cells in blocks]
    cell = [cell_volume(block, cells) for block, cells in blocks]
    log_p = [_log_p(energy, x, log_z) for x in pts]
    if not _mass(log_p, cell) <= RING_MASS:
        return None
    log_q = [flow.log_prob(x).double() for x in pts]
    if not _mass(log_q, cell) <= RING_MASS:  # NaN too
        return None
    inner = _log_p(energy, grid_points(known.window, known.n).to(dtype), log_z)
    total = _kl_tv_sums(inner, known.log_q.reshape(-1)) * cell_volume(known.window, known.n)
    for lp, lq, c in zip(log_p, log_q, cell, strict=True):
        total += _kl_tv_sums(lp, lq) * c
    return float(total[0]), float(total[1])


def _mass(log_density: list[Tensor], cell: list[float]) -> float:
    """Σ exp(ln density) · cell volume over blocks of cells: the mass on them (midpoint rule)."""
    return sum(float(d.exp().sum()) * c for d, c in zip(log_density, cell, strict=True))


def _log_p(energy: Energy, points: Tensor, log_z: float) -> Tensor:
    """ln p = −U − ln Z at ``points`` (float64; NaN → −∞)."""
    return torch.nan_to_num(-energy(points).double() - log_z, nan=-math.inf)


def _kl_tv_sums(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Σ p (ln p − ln q) (over p > 0) and ½ Σ |p − q| over cell midpoints: the midpoint rule's
    KL(p‖q) and TV once times the cell volume. float64, (2,)."""
    p, q = log_p.exp(), log_q.exp()
    kl_pq = torch.where(p > 0, p * (log_p - log_q), 0.0).sum()
    return torch.stack([kl_pq, 0.5 * (p - q).abs().sum()])


def _cells(block: Window, widths: list[float]) -> tuple[int, ...]:
    """Cells per axis of ``block`` no wider than ``widths`` (at least one)."""
    return tuple(
        max(1, math.ceil((hi - lo) / w - 1e-9)) for (lo, hi), w in zip(block, widths, strict=True)
    )


def ring(box: Window, inner: Window) -> list[Window]:
    """A 2-D ``box`` less the ``inner`` rectangle it holds, as up to four rectangles: the strips
    left and right of ``inner`` at the box's full height, and those below and above it."""
    (x0, x1), (y0, y1) = box
    (a0, a1), (b0, b1) = inner
    parts = [((x0, a0), (y0, y1)), ((a1, x1), (y0, y1)), ((a0, a1), (y0, b0)), ((a0, a1), (b1, y1))]
    return [p for p in parts if p[0][1] > p[0][0] and p[1][1] > p[1][0]]


TAILS = (
    "the largest weights sit at q's outer edge (beyond 99% of q's draws), so q's tails are "
    "lighter than p's: q's bulk and quantiles may be fine, but its tail probabilities and high "
    "moments, and ln Z from the weights, are not. "
)
HEAVY_ADVICE = (
    "p's tails are heavier than a Gaussian's (U grows like r^{a:.1f} far out), and more layers, "
    "restarts or steps cannot give a flow on a Gaussian base a heavy tail (far out, every layer "
    "type of nfcli is affine); what "
    "helps: --base student_t (a base whose degrees of freedom are learnt per coordinate), "
    "reparametrise the heavy-tailed variable (fit its log or asinh), report quantiles rather "
    "than moments, or use exact MCMC where available."
)
LIGHT_ADVICE = (
    "p's tails are not heavier than a Gaussian's (U grows like r^{a:.1f} far out), so a larger "
    "--K or more --iters may let q reach further out; meanwhile report quantiles rather than "
    "moments."
)
UNSURE_ADVICE = (
    "If p's tails are heavier than a Gaussian's (a power law such as Student-t), more layers, "
    "restarts or steps cannot fix that (every layer type of nfcli keeps a Gaussian base's "
    "tails): try --base student_t, reparametrise the heavy-tailed variable, report quantiles "
    "rather than "
    "moments, or use exact MCMC where available; if they are not, a larger --K or more --iters "
    "may reach further out."
)


def tails_advice(exponent: float | None) -> str:
    """What a k̂ from q's tails means, and what helps, given how fast U grows far out."""
    if exponent is None or not math.isfinite(exponent):
        return TAILS + UNSURE_ADVICE
    return TAILS + (HEAVY_ADVICE if exponent < 1.5 else LIGHT_ADVICE).format(a=exponent)


# a usable k̂ whose largest weights sit in q's tails: a misfit in scale (a funnel's neck) that
# resampling q's draws cannot correct. The centred eight schools (nfcli fit
# benchmarks/posteriors/eight_schools_centered.py --sampler q, then nfcli sample --resample -n
# 20000): log τ's sd is 0.824 of the truth in q and 0.897 resampled; 0.927 in the NeuTra draws
# the fit writes by default (README, "Fits that cover p")
TAILS_USABLE_ADVICE = (
    "the largest weights sit at q's edge, so q is too narrow somewhere (in scale or tails), which "
    "resampling q's draws cannot correct (they never reach that mass): draw with MCMC with the "
    "flow, nfcli mcmc MODEL --method neutra (from 3-D on, the fit's draws are already its: see "
    "the draws row), or reparametrise the variable whose scale q misses (a funnel written "
    "non-centred)."
)
# the share of q's draws outside p's support (U not finite) above which a fit is at best usable:
# benchmarks/textbook.py's pass mark (README, "Textbook densities")
OUTSIDE_USABLE = 0.001
MODE_ADVICE = (
    "the largest weights sit inside q's bulk, where p has a mode or region that q underweights, "
    "so importance weights and their ln Z cannot be trusted; try --restarts 8, a larger --K or "
    "more --iters."
)
EDGE_ADVICE = (
    "the largest weights sit inside q, and q also has draws where p = 0 (U is not finite): p's "
    "density ends at the edge of its support, which q's smooth density cannot follow, so "
    "importance weights and their ln Z cannot be trusted; fit an unconstrained transform of the "
    "bounded variables (ln x for x > 0, logit for 0 < x < 1, with the log-Jacobian added to U)."
)
UNKNOWN_ADVICE = (
    "q misses mass that p has: a lost mode (try --restarts 8, a larger --K or more --iters) or "
    "tails lighter than p's (which more layers or steps cannot fix), so importance weights and "
    "their ln Z cannot be trusted."
)


def _span(values: list[float], fmt: str) -> str:
    """'0.60–0.73' for the lowest and highest of ``values`` (one value if they agree)."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}–{hi}"


def verdict(r: TrustReport) -> tuple[str, list[str]]:
    """A plain-language verdict on a fit's trust report: 'good', 'usable' or 'do not trust', and
    why.

    k̂ and ESS are read at their median over the independent sets of draws (``khat_replicates``,
    ``ess_fraction_replicates``; the single ``khat``/``ess_fraction`` for older reports), and
    when the sets fall on both sides of a threshold the reason says "borderline" and the fit is
    at best "usable": never "good" while one set says otherwise, never condemned by the one set
    that happened to draw far into a tail (a banana fit with KL(q‖p) < 0.001 has k̂ 0.58–0.73
    over four sets). The advice for a large k̂ follows ``khat_cause``: "tails" (q's tails are too
    light: no setting of planar/radial layers fixes that) or "mode" (p has mass that q lost).
    From 3 dimensions on, a mode of p that q lost (``mode_search``: ``ModeSearch.lost``) makes
    it "do not trust", whatever k̂ and ESS say."""
    level, reasons = 0, []  # 0 good, 1 usable, 2 do not trust

    def worse(to: int, why: str) -> None:
        nonlocal level
        level = max(level, to)
        reasons.append(why)

    ks = [float(k) for k in r.khat_replicates or [r.khat if r.khat is not None else math.inf]]
    ks = [k if math.isfinite(k) else math.inf for k in ks]
    k_hi = max(ks)
    over = f" across {len(ks)} sets of draws" if len(ks) > 1 else ""
    finite = [k for k in ks if math.isfinite(k)]
    shown = f"k̂ {_span(finite, '.2f')}{over}" if finite else "k̂"
    if len(finite) < len(ks):
        note = r.khat_note or "the Pareto fit failed"
        shown += (", " if finite else " ") + f"not available in {len(ks) - len(finite)}: {note}"
    k_mid = statistics.median(ks)
    borderline = khat_verdict(min(ks)) != khat_verdict(k_hi)
    edge = ": borderline" if borderline else ""
    cause = r.khat_cause
    if cause == "mode" and r.outside_share > 0:
        cause = "edge"  # inside q, but p has a support boundary there: no mode to restart for
    if khat_verdict(k_mid) == "do not trust":
        advice = {
            "tails": tails_advice(r.tail_exponent),
            "mode": MODE_ADVICE,
            "edge": EDGE_ADVICE,
        }.get(cause, UNKNOWN_ADVICE)
        worse(2, f"{shown} (> {KHAT_TRUST} is do not trust{edge}): {advice}")
    elif khat_verdict(k_mid) == "usable" or borderline:
        why = {
            "tails": "the largest weights sit in q's tails",
            "mode": "q underweights a mode",
            "edge": "q cannot follow p at the edge of its support",
        }
        far = (
            f"; where k̂ > {KHAT_TRUST}, {why.get(cause, 'q misses some of p’s mass')}"
            if khat_verdict(k_hi) == "do not trust"
            else ""
        )
        fix = TAILS_USABLE_ADVICE if cause == "tails" else "sample --resample corrects q's samples."
        worse(1, f"{shown} ({KHAT_GOOD}–{KHAT_TRUST} is usable{edge}{far}); {fix}")
    a = r.tail_exponent
    heavy = a is None or not math.isfinite(a) or a < 1.5
    kl, named = r.kl_qp, "KL(q‖p)"
    if kl is not None and not math.isfinite(kl) and r.kl_qp_inside is not None:
        # q has draws where p = 0: KL is ∞ for that alone; judge the fit inside the support
        kl, named, f = r.kl_qp_inside, "KL(q‖p) over p's support", r.outside_share
        if f > OUTSIDE_USABLE:
            worse(
                1,
                f"q puts {f:.2%} of its draws where p = 0 (U is not finite there), so KL(q‖p) is "
                "infinite; sample --resample gives them weight 0. A transform to an unconstrained "
                "variable (ln x for x > 0, logit for 0 < x < 1) keeps every draw inside.",
            )
    if kl is not None:
        if not math.isfinite(kl) or kl > 0.2:
            worse(2, f"{named} = {kl:.3f} nats is large: q is a poor match for p.")
        elif kl > 0.05 and cause == "tails" and k_hi > KHAT_TRUST and heavy:
            worse(
                1,
                f"{named} = {kl:.3f} nats: a fair match; if the misfit is in the tails (see k̂), "
                "more --iters or a larger --K will not remove it.",
            )
        elif kl > 0.05:
            worse(1, f"{named} = {kl:.3f} nats: a fair match; more --iters or a larger --K help.")
    esses = r.ess_fraction_replicates or ([r.ess_fraction] if r.ess_fraction is not None else [])
    if esses:
        ess, ess_shown = statistics.median(esses), f"ESS {_span(esses, '.1%')} of the samples{over}"
        if ess < 0.01:
            why = {
                "tails": "a few draws far out in q's tails carry all the weight (see k̂)",
                "mode": "a few samples carry all the weight, as when q misses a mode; try "
                "--restarts 8",
                "edge": "a few samples near the edge of p's support carry all the weight",
            }.get(
                cause,
                "a few samples carry all the weight: q misses a mode or its tails are too light",
            )
            worse(2, f"{ess_shown}: {why}.")
        elif ess < 0.1 or min(esses) < 0.1:
            edge = "" if ess < 0.1 else " (borderline: some sets of draws are below 10%)"
            worse(1, f"{ess_shown}{edge}: importance-sampling estimates are noisy.")
    search = r.mode_search
    if search is not None and search.lost:
        worse(2, lost_modes_reason(search, r))
    spread, noise = r.restarts_log_z_spread, r.restarts_log_z_noise
    if spread is not None and spread > (noise if noise is not None else 0.0):
        worse(
            1,
            f"the restarts' ln Z estimates differ by {spread:.3f} nats, more than their noise: "
            "some restarts lost a mode, so single fits of this target are unreliable; the kept "
            "fit is the one with the highest ln Z (more restarts make that safer).",
        )
    for w in r.warnings:
        worse(1, w)
    stopped, done, iters = r.stopped, r.steps_done, r.iters
    if stopped == "interrupted":
        worse(
            1,
            f"the fit was interrupted after {done} of {iters} steps; nfcli fit --resume "
            "model.pt finishes it.",
        )
    elif stopped == "improper":  # the lead diagnosis: the numbers above it measure nothing
        why = (
            "measured after the fit by quadrature: " + r.improper.split(":")[0]
            if r.improper
            else f"the fit kept spreading and was stopped after {done} of {iters} steps"
        )
        # the only reason: advice on q's tails or KL (--base student_t, more --K) would be about
        # matching a p that does not exist
        return "do not trust", [f"the target is improper ({why}); see above."]
    elif stopped == "nonfinite":
        worse(
            2,
            f"the fit had no finite loss and was stopped after {done} of {iters} steps "
            "(see above).",
        )
    if not reasons:
        reasons.append(
            f"k̂ < {KHAT_GOOD}{' in every set of draws' if over else ''}"
            + (" and KL(q‖p) ≤ 0.05 nats" if kl is not None else "")
            + "."
        )
    return ("good", "usable", "do not trust")[level], reasons


def lost_modes_reason(search: ModeSearch, r: TrustReport, shown: int = 3) -> str:
    """The verdict's reason for the modes of p that q lost (``ModeSearch.lost``): where each is
    (the first 8 variables, named as in ``r.vars``), p's share of the mass there and q's, and
    what to try, which depends on how the fit started (``r.start``)."""
    lost = search.lost
    names = r.vars or [f"x{i + 1}" for i in range(len(lost[0].location))]
    where = []
    for m in lost[:shown]:
        coords = [f"{n}={round(v, 2) + 0.0:g}" for n, v in zip(names, m.location, strict=True)]
        more = ", …" if len(coords) > 8 else ""
        where.append(
            f"({', '.join(coords[:8])}{more}) holds {m.p_share:.0%} of p's mass and "
            f"{m.q_share:.1%} of q's draws"
        )
    also = f"; and {len(lost) - shown} more" if len(lost) > shown else ""
    advice = (
        "The fit started on every mode that its survey of U found, so the survey missed these "
        "or the fit let them go: try a longer fit (--iters) or --restarts 8."
        if r.start == "mode"
        else "Try --start mode (the default), which surveys U and starts on every mode it "
        "finds, or --restarts 8 or a longer fit (--iters)."
    )
    return (
        f"q lost {len(lost)} of the {len(search.modes)} modes of p that a search of U from "
        f"{search.starts} starts found: {'; '.join(where)}{also} (p's shares by the Laplace "
        "approximation). Importance weights (k̂, ESS, ln Z) cannot see mass where q puts no "
        f"draws. {advice}"
    )


def resample(
    flow: Flow, energy: Energy, n: int, pool: int, generator: torch.Generator | None = None
) -> tuple[Tensor, ImportanceSampling]:
    """Sampling-importance-resampling: draw ``pool`` samples of q, weight them by w = p̃/q and
    draw n of them with replacement in proportion to w. As the pool grows the result tends to p
    when k̂ is good; the pool's ESS bounds how many distinct samples it can hold."""
    z, log_w = draw_weighted(flow, energy, pool, generator)
    log_w = log_w.nan_to_num(nan=-math.inf)
    imp = importance_from_log_weights(log_w)
    if imp.samples == 0:
        raise NfcliError(
            f"Cannot resample: U is infinite or NaN at every one of the {pool:,} draws of q. "
            "Check the energy where the fit puts its mass (nfcli plot), or refit."
        )
    if generator is not None and generator.device.type != "cpu":  # the weights are on the CPU
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(torch.softmax(log_w, 0), n, replacement=True, generator=generator)
    return z[idx], imp
