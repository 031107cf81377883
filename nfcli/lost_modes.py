"""Lost modes in any dimension: search U for minima where q does not go, and compare p's mass
there with q's.

Importance weights w = p̃/q only see where q puts draws: a fit that lost a mode far from the
others scores a good k̂ and ESS on what it kept. ``nfcli.run.evaluate`` runs this search from 3
dimensions on only: in 1-D and 2-D grid quadrature already measures KL(p‖q) and the total
variation exactly, which see a lost mode, so the search would add nothing there (and the 2-D
verdicts stay as they were). Finding the modes does not rely on q's draws beyond q's mean μ and
per-coordinate spread σ; the search runs in q's standardised coordinates y = (x − μ)/σ, so that
a posterior whose scales differ by orders of magnitude is searched as one of unit scales.

1. ``dispersed_starts``: S starts (256 by default): an eighth of them q's own draws (they find
   the modes q covers, which the shares are normalised over), three eighths at r·u with u a
   random direction and r log-uniform between √D and 6√D (one to six times the radius of q's
   draws), and half uniform in a box three times as wide as q's draws reach in each coordinate.
   A start where U is not finite (outside a bounded support) is pulled halfway back to q's
   mean, up to 10 times, and dropped (``outside``) if U is still not finite.
2. ``minimise``: BFGS from every start at once, each independent of the others: one batched
   evaluation of U and ∇U per step, an inverse-Hessian estimate per start (D × D), and a
   backtracking line search that keeps a step only where U falls enough (Armijo) and stays
   finite, so a search never leaves a bounded support. It needs no second derivatives, which
   for some energies (a recursion such as GARCH's) cost a hundred gradients.
3. The ends where ∇U ≈ 0 are merged (near-copies first, then ``nfcli.mode.distinct_modes``, by
   the modes' own widths); those that are no proper minimum (``nfcli.mode.is_minimum``: a flat
   direction, as in an improper U, or a saddle), and the starts that did not settle (U falling
   without bound, or a slow crawl down a heavy tail), are counted in ``not_minima`` and skipped.
   Each mode m gets its Laplace mass exp(−U(m)) (2π)^{D/2} |H|^{-1/2}, H = ∇²U(m); p's share is
   its mass over the sum of all the modes' masses, q's share the fraction of q's draws (up to
   MAX_DRAWS of them) that the mixture Σ_k P_k N(m_k, H_k⁻¹) of the modes' Laplace Gaussians,
   weighted by p's shares P_k, assigns to it (its most likely component). Both shares add up to
   1 over the modes found, so a lone mode is never lost, whatever shape p has around it.

A mode is lost (``FoundMode.lost``) when p's share is at least ``MIN_P_SHARE`` and q's share is
below ``LOST_RATIO`` times it: the Laplace mass of a skewed or heavy-tailed mode can be off by a
factor of a few, hence the tenfold margin.

Where it can still miss a lost mode: a mode whose basin of attraction is small and far from
every start (S starts cover a D-dimensional region ever more thinly as D grows); a mode beyond
the start box (more than about three times as far from q's mean as q's draws reach in some
coordinate); a mode that is no proper minimum (a ridge or flat valley of mass, a funnel's neck:
its mass is not compared); a mode with less than MIN_P_SHARE of p's mass by the Laplace
approximation. And very high D makes it slow: the BFGS estimates hold S·D² numbers and cost
S·D² per step, and more steps are needed as D grows; so S is capped where S·D² would pass
BFGS_BUDGET (19 starts in 1,600-D), which leaves the search thinner there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from nfcli.energy import Energy
from nfcli.mode import Laplace, cholesky, derivatives, distinct_modes, is_minimum

STARTS = 256
# Lost: q's share below LOST_RATIO of p's, where p's is at least MIN_P_SHARE. Measured with
# benchmarks/mode_search.py on three modes in 4-D: q/p was 0.00 at every lost mode, and 0.86 at
# worst where a fit kept all three; below 2% of p's mass, the Laplace shares are too rough to
# call a mode lost (and it matters little).
MIN_P_SHARE = 0.02
LOST_RATIO = 0.1
MAX_DRAWS = 20_000  # of q's draws, assigned to the modes found
# the starts' BFGS inverse Hessians hold S·D² numbers: at most BFGS_BUDGET of them (400 MB), so
# from 443-D on there are fewer starts than STARTS (a 1,600-D target: 19), and at least MIN_STARTS
BFGS_BUDGET, MIN_STARTS = 50_000_000, 16


@dataclass
class FoundMode:
    """A distinct proper minimum m of U: ``location`` (D,), ``energy`` U(m), ``p_share`` its
    Laplace mass over that of all the modes found, ``q_share`` the fraction of q's draws that
    the mixture of the modes' Laplace Gaussians assigns to it."""

    location: list[float]
    energy: float
    p_share: float
    q_share: float

    @property
    def lost(self) -> bool:
        """p has at least MIN_P_SHARE of its mass here and q under LOST_RATIO of that."""
        return self.p_share >= MIN_P_SHARE and self.q_share < LOST_RATIO * self.p_share


@dataclass
class ModeSearch:
    """What ``search_modes`` found: the distinct ``modes``, lowest U first; ``starts`` drawn,
    ``outside`` of them dropped (U not finite even pulled back towards q), ``not_minima`` ends
    that were no proper minimum (flat, saddle, unbounded or unsettled), ``draws`` of q counted for
    q's shares, ``seconds`` taken, and ``note`` why the search failed ("" when it did not)."""

    modes: list[FoundMode] = field(default_factory=list)
    starts: int = 0
    outside: int = 0
    not_minima: int = 0
    draws: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def lost(self) -> list[FoundMode]:
        return [m for m in self.modes if m.lost]

    def describe(self) -> str:
        """One line for the summary table: "3 modes from 256 starts, 0.04 s; q lost 2"."""
        if self.note:
            return f"not available: {self.note}"
        found, lost = len(self.modes), len(self.lost)
        text = f"{found} mode{'s' if found != 1 else ''} from {self.starts} starts, "
        text += f"{self.seconds:.2f} s"
        if self.not_minima:
            text += (
                f"; {self.not_minima} start{'s' if self.not_minima != 1 else ''} stopped where U "
                "has no proper minimum (a flat direction, a saddle or a funnel's neck): not modes"
            )
        return text + (f"; q lost {lost}" if lost else "; q lost none" if found else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModeSearch:
        rest = dict(d)
        modes = [FoundMode(**m) for m in rest.pop("modes")]
        return cls(modes=modes, **rest)


def search_modes(
    energy: Energy, draws: Tensor, starts: int = STARTS, seed: int = 0, steps: int = 200
) -> ModeSearch:
    """Search U from ``starts`` dispersed starts and compare p's and q's mass at each distinct
    mode found (the module docstring); ``draws`` (n, D) are q's. A search that U does not allow
    (U raises in float64 or has no second derivatives) returns no modes and a ``note``."""
    t0 = time.perf_counter()
    x = draws.detach().to(torch.float64)
    x = x[torch.isfinite(x).all(-1)]
    starts = min(starts, max(MIN_STARTS, BFGS_BUDGET // x.shape[-1] ** 2))
    result = ModeSearch(starts=starts, draws=len(x))
    if len(x) < 2:
        result.note = f"{len(x)} of q's draws are finite"
        return result
    try:
        mu, sd = x.mean(0), x.std(0).nan_to_num(0.0).clamp_min(1e-6)
        standard = Energy(lambda y: energy(mu + sd * y), energy.names, energy.source)
        y = (x - mu) / sd
        g = torch.Generator().manual_seed(seed)
        points = into_support(standard, dispersed_starts(y, starts, g), torch.zeros_like(mu))
        result.outside = starts - len(points)
        ends, settled = minimise(standard, points, steps)
        result.not_minima = int((~settled).sum())
        reps, label = _unique(ends[settled])
        if len(reps):
            u, grad, hess = derivatives(standard, reps)
            proper = _minima(u, grad, torch.linalg.eigvalsh(hess.nan_to_num()))
            result.not_minima += int((~proper[label]).sum())
            reps = reps[proper]
        laplaces = distinct_modes(standard, list(reps))
        if laplaces:
            log_z = torch.tensor([lap.log_z for lap in laplaces], dtype=torch.float64)
            p_shares = torch.softmax(log_z, 0)
            q_shares = _assign(laplaces, p_shares, y[:MAX_DRAWS])
            for lap, p_share, q_share in zip(laplaces, p_shares, q_shares, strict=True):
                where = (mu + sd * lap.mode).tolist()
                result.modes.append(FoundMode(where, lap.energy, float(p_share), float(q_share)))
    except Exception as e:  # whatever U raises here must not cost a finished fit its report
        result.modes, result.note = [], f"U could not be searched ({type(e).__name__}: {e})"
    result.seconds = time.perf_counter() - t0
    return result


def dispersed_starts(y: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n starts (n, D) around q's standardised draws y (S, D) (module docstring, step 1): n/8 of
    the draws, 3n/8 at r·u (u uniform on the sphere, r log-uniform in [√D, 6√D]) and the rest
    uniform in the box [lo − span, hi + span], lo and hi the draws' extent per coordinate."""
    S, D = y.shape
    n_draws, n_ring = n // 8, 3 * n // 8
    own = y[torch.randint(S, (n_draws,), generator=generator)]
    u = torch.randn(n_ring, D, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    ring = u * math.sqrt(D) * 6 ** torch.rand(n_ring, 1, generator=generator, dtype=torch.float64)
    lo, hi = y.min(0).values, y.max(0).values
    span = (hi - lo).clamp_min(2.0)
    box = torch.rand(n - n_draws - n_ring, D, generator=generator, dtype=torch.float64)
    return torch.cat([own, ring, lo - span + 3 * span * box])


@torch.no_grad()
def into_support(energy: Energy, points: Tensor, centre: Tensor, halvings: int = 10) -> Tensor:
    """The points where U is finite, each pulled halfway back to ``centre`` until it is (up to
    ``halvings`` times); those where U is still not finite are dropped."""
    x = points.clone()
    for _ in range(halvings):
        bad = ~torch.isfinite(energy(x).double())
        if not bool(bad.any()):
            break
        x[bad] = centre + 0.5 * (x[bad] - centre)
    return x[torch.isfinite(energy(x).double())]


def minimise(energy: Energy, points: Tensor, steps: int = 200) -> tuple[Tensor, Tensor]:
    """BFGS from each of N points (N, D) at once, each independent of the others (module
    docstring, step 2). Returns the end points (N, D) and which of them settled: U finite and
    ‖∇U‖ ≤ 1e-6·(1 + |U|), a tenth of what ``is_minimum`` asks."""
    x = points.detach().to(torch.float64).clone()
    N, D = x.shape
    f, g = _value_and_grad(energy, x)
    h_inv = torch.eye(D, dtype=torch.float64).repeat(N, 1, 1)
    first = torch.ones(N, dtype=torch.bool)  # no BFGS update yet: H⁻¹ still to be scaled
    active = ~_settled(f, g) & torch.isfinite(f)
    for _ in range(steps):
        i = active.nonzero().squeeze(-1)
        if len(i) == 0:
            break
        d = -(h_inv[i] @ g[i].unsqueeze(-1)).squeeze(-1)
        slope = (d * g[i]).sum(-1)
        uphill = ~(slope < 0)  # H⁻¹ lost its positive definiteness to rounding: start afresh
        d[uphill], h_inv[i[uphill]], first[i[uphill]] = -g[i[uphill]], torch.eye(D).double(), True
        slope = (d * g[i]).sum(-1)
        t = _armijo(energy, x[i], f[i], d, slope)
        moved = t > 0
        j = i[moved]
        s = t[moved, None] * d[moved]
        f_new, g_new = _value_and_grad(energy, x[j] + s)
        y = g_new - g[j]
        sy = (s * y).sum(-1)
        ok = sy > 1e-12 * s.norm(dim=-1) * y.norm(dim=-1)
        scale = torch.where(first[j] & ok, sy / (y * y).sum(-1).clamp_min(1e-300), 1.0)
        h = h_inv[j] * scale[:, None, None]
        rho = torch.where(ok, 1 / sy.clamp_min(1e-300), 0.0)[:, None]
        hy = (h @ y.unsqueeze(-1)).squeeze(-1)
        c = rho * (1 + rho * (y * hy).sum(-1, keepdim=True))
        h_inv[j] = h + _outer(c * s, s) - _outer(rho * hy, s) - _outer(rho * s, hy)
        first[j] &= ~ok
        x[j], f[j], g[j] = x[j] + s, f_new, g_new
        # no step along d lowers U: start afresh from steepest descent, or stop if that it was
        stuck, fresh = i[~moved & first[i]], i[~moved & ~first[i]]
        active[stuck] = False
        h_inv[fresh], first[fresh] = torch.eye(D, dtype=torch.float64), True
        active[j] = ~_settled(f_new, g_new)
    return x, _settled(f, g)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """a bᵀ for each row: (N, D), (N, D) → (N, D, D)."""
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def _value_and_grad(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    """U (N,) and ∇U (N, D) at N points, float64, detached."""
    x = x.detach().requires_grad_(True)
    u = energy(x).double()
    (g,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), g


def _settled(f: Tensor, g: Tensor) -> Tensor:
    """U finite and ‖∇U‖ ≤ 1e-6·(1 + |U|), elementwise over points."""
    return torch.isfinite(f) & (g.norm(dim=-1) <= 1e-6 * (1 + f.abs()))


@torch.no_grad()
def _armijo(
    energy: Energy, x: Tensor, f: Tensor, d: Tensor, slope: Tensor, halvings: int = 40
) -> Tensor:
    """For each row, the first of t = 1, ½, ¼, … with U(x + t·d) finite and at most
    U(x) + 10⁻⁴·t·slope (Armijo's sufficient decrease), or 0 where none of ``halvings`` is."""
    t = torch.ones(len(x), dtype=torch.float64)
    found = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(halvings):
        k = (~found).nonzero().squeeze(-1)
        if len(k) == 0:
            break
        u = energy(x[k] + t[k, None] * d[k]).double()
        good = torch.isfinite(u) & (u <= f[k] + 1e-4 * t[k] * slope[k])
        found[k[good]] = True
        t[k[~good]] /= 2
    return torch.where(found, t, 0.0)


def _minima(u: Tensor, grad: Tensor, evals: Tensor) -> Tensor:
    """``is_minimum`` of N points from U (N,), ∇U (N, D) and ∇²U's eigenvalues (N, D)."""
    finite = torch.isfinite(grad).all(-1)
    return is_minimum(u, grad.norm(dim=-1), evals[:, 0], evals[:, -1]) & finite


def _unique(points: Tensor, tol: float = 1e-4) -> tuple[Tensor, Tensor]:
    """The points (N, D) without near-copies (within tol·(1 + ‖x‖) of one kept earlier), and for
    each point the index of the one kept for it (N,): the many starts that end at the same
    minimum, before ``distinct_modes`` merges what is left by the modes' own widths."""
    dist = torch.cdist(points, points)
    label = torch.full((len(points),), -1, dtype=torch.long)
    kept: list[int] = []
    for n in range(len(points)):
        if label[n] < 0:
            near = (label < 0) & (dist[n] <= tol * (1 + float(points[n].norm())))
            label[near] = len(kept)
            kept.append(n)
    return points[kept], label


def _assign(laplaces: list[Laplace], p_shares: Tensor, y: Tensor) -> Tensor:
    """The fraction of the draws y (S, D) that the mixture Σ_k P_k N(m_k, Σ_k) of the modes'
    Laplace Gaussians, weighted by p's shares P_k, assigns to each mode (its most likely
    component) (K,)."""
    scores = []
    for lap, share in zip(laplaces, p_shares, strict=True):
        L = cholesky(lap.covariance)
        r = torch.linalg.solve_triangular(L, (y - lap.mode).T, upper=False)
        scores.append(torch.log(share) - 0.5 * r.square().sum(0) - L.diagonal().log().sum())
    nearest = torch.stack(scores).argmax(0)
    return torch.bincount(nearest, minlength=len(laplaces)).double() / max(len(y), 1)
