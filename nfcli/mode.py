"""Where the posterior is: the mode of p ∝ exp(−U) and the Laplace approximation there.

A fit started from N(0, 2²) has to travel to the mass first; for a badly scaled posterior (a
regression with predictors on very different scales) that journey is most of the fit, or all of
it. ``find_mode`` minimises U by L-BFGS with a strong-Wolfe line search in float64 from a few
starts, and ``laplace`` turns the best mode into the Gaussian N(m, H⁻¹), H = ∇²U(m), with the
Laplace estimate of ln Z:

    ln Z ≈ −U(m) + (D/2) ln 2π − ½ ln det H.

Where p has no mode (the centred eight-schools posterior and other funnels: U falls without
bound down the neck), or the Laplace Gaussian is a poor fit, ``gaussian_start`` looks along the
L-BFGS paths instead, in the manner of Pathfinder (Zhang, Carpenter, Gelman & Vehtari 2022, JMLR
23(306)): at points of each path it forms the Gaussian N(x, |H(x)|⁻¹) (H's eigenvalues taken in
absolute value and floored) and keeps the candidate, the Laplace one included, with the highest
ELBO on common draws. Pathfinder uses L-BFGS's own low-rank inverse-Hessian estimate; the exact
Hessian here costs D gradient evaluations per point, which is cheap for the 5–100 dimensions of
a posterior and gives the full covariance of a badly scaled one. A fit starts from the result
(``nfcli fit --start mode``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcli.energy import Energy
from nfcli.errors import NfcliError


@dataclass
class Laplace:
    """The Gaussian at the mode: ``mode`` (D,), ``covariance`` (D, D) = H⁻¹ (float64),
    ``energy`` U(m), ``log_z`` the Laplace ln Z, ``min_curvature`` the smallest eigenvalue of H
    (≤ 0: not a proper maximum, and the covariance is that of H with such eigenvalues raised to
    ``floor``), ``gradient_norm`` ‖∇U(m)‖ and ``starts`` the number of starts tried."""

    mode: Tensor
    covariance: Tensor
    energy: float
    log_z: float
    min_curvature: float
    gradient_norm: float
    starts: int
    max_curvature: float = math.nan  # the largest eigenvalue of H

    @property
    def std(self) -> Tensor:
        return self.covariance.diagonal().sqrt()


def _u(energy: Energy, z: Tensor) -> Tensor:
    """U at one point z (D,), as a scalar."""
    return energy(z.unsqueeze(0)).reshape(())


def find_mode(
    energy: Energy,
    starts: int = 4,
    scale: float = 2.0,
    seed: int = 0,
    max_iter: int = 2000,
    paths: list[list[Tensor]] | None = None,
    points: list[Tensor] | None = None,
    ends: list[Tensor] | None = None,
) -> tuple[Tensor, int]:
    """The lowest minimum of U that L-BFGS (float64, strong Wolfe) finds from the origin and
    ``starts`` − 1 draws of N(0, scale²); and how many starts reached a finite U. Raises an
    NfcliError when none did. ``paths``, when given, receives each start's list of the points
    where U was evaluated with a finite value, in order (the iterates and line-search trials).
    ``points``: start from these instead. ``ends``, when given, receives every start's end point
    where U is finite (the local minima found, with repeats)."""
    D = energy.dim
    if points is None:
        g = torch.Generator().manual_seed(seed)
        points = [torch.zeros(D, dtype=torch.float64)]
        points += [
            torch.randn(D, generator=g, dtype=torch.float64) * scale for _ in range(starts - 1)
        ]
    points = [p.detach().to(torch.float64) for p in points]
    best, best_u, finite = None, math.inf, 0
    for start in points:
        path: list[Tensor] = []
        if paths is not None:
            paths.append(path)
        z = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [z],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure(
            z: Tensor = z, opt: torch.optim.LBFGS = opt, path: list[Tensor] = path
        ) -> Tensor:
            opt.zero_grad()
            u = _u(energy, z)
            if torch.isfinite(u):
                u.backward()
                path.append(z.detach().clone())
            return u

        # a line search that met NaN (torch's strong Wolfe raises RuntimeError, or IndexError
        # when NaN empties its bracket: at the walls of a bounded support): see below
        with contextlib.suppress(RuntimeError, IndexError):
            opt.step(closure)
        with torch.no_grad():
            u = float(_u(energy, z))
            if not math.isfinite(u) and path:  # the search ran off: where U was last finite
                z = path[-1]
                u = float(_u(energy, z))
        if math.isfinite(u):
            finite += 1
            if ends is not None:
                ends.append(z.detach().clone())
            if u < best_u:
                best, best_u = z.detach().clone(), u
    if best is None:
        raise NfcliError(
            f"Could not find a mode of U: from each of {len(points)} starts (the origin and draws "
            f"of N(0, {scale:g}²)) U was not finite or the search broke down. Check that U is "
            "finite somewhere near the origin, or fit without a mode-finding start."
        )
    return best, finite


def hessian(energy: Energy, x: Tensor) -> Tensor:
    """∇²U at one point x (D,) → (D, D): ``hessians`` of that one point."""
    return hessians(energy, x.reshape(1, -1))[0]


def cholesky(covariance: Tensor) -> Tensor:
    """The lower Cholesky factor of a covariance whose scales may differ by orders of magnitude
    (a regression's coefficients: 1e-5 next to 1e2): factorised as the correlation matrix's,
    L = diag(σ)·chol(Σ / σσᵀ), which is well conditioned where Σ itself is not."""
    sd = covariance.diagonal().sqrt()
    corr = covariance / torch.outer(sd, sd)
    return sd.unsqueeze(-1) * torch.linalg.cholesky(0.5 * (corr + corr.T))


def hessians(energy: Energy, points: Tensor) -> Tensor:
    """∇²U at each of N points (N, D) at once → (N, D, D), float64: ``derivatives``' third."""
    return derivatives(energy, points)[2]


def derivatives(energy: Energy, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U (N,), ∇U (N, D) and ∇²U (N, D, D, symmetrised) at each of N points (N, D) at once,
    float64 and detached: U of a batch is a sum of independent rows, so one double backward pass
    per direction serves every point (vectorised over the D directions where U's operations allow
    it)."""
    x = points.detach().to(torch.float64).requires_grad_(True)
    u = energy(x)
    (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    D = x.shape[-1]
    eye = torch.eye(D, dtype=torch.float64).unsqueeze(1).expand(D, *x.shape)
    try:
        (h,) = torch.autograd.grad(g, x, eye, is_grads_batched=True, retain_graph=True)
    except RuntimeError:  # an operation without a batching rule: one direction at a time
        h = torch.stack([torch.autograd.grad(g, x, e, retain_graph=True)[0] for e in eye])
    h = h.permute(1, 0, 2)  # (N, D, D): row j holds ∂(∂U/∂x_j)/∂x
    return u.detach(), g.detach(), 0.5 * (h + h.transpose(1, 2)).detach()


def _covariance(h: Tensor, floor: float, absolute: bool = True) -> tuple[Tensor, Tensor]:
    """H⁻¹ with H's eigenvalues raised to at least ``floor`` × the largest |eigenvalue|, so that
    it is positive definite whatever H is, and those raised eigenvalues. ``absolute``: a negative
    eigenvalue counts by its size (a point on a path, curving either way); otherwise it is raised
    to the floor (the Laplace rule: a direction of negative curvature is not a mode's)."""
    evals, evecs = torch.linalg.eigh(h)
    top = float(evals.abs().max().clamp_min(1e-300))
    raised = (evals.abs() if absolute else evals).clamp_min(floor * top)
    return (evecs / raised) @ evecs.T, raised


def laplace(energy: Energy, mode: Tensor, starts: int = 1, floor: float = 1e-8) -> Laplace:
    """The Laplace approximation at ``mode`` (see the module docstring), with H from autograd
    (O(D²) evaluations' worth of work: meant for the tens to hundreds of dimensions of a
    posterior). Eigenvalues of H below ``floor`` × its largest are raised to that, so that the
    covariance is always positive definite; ``min_curvature`` keeps the raw smallest one."""
    m = mode.detach().to(torch.float64)
    h = hessian(energy, m)
    evals = torch.linalg.eigvalsh(h)
    covariance, raised = _covariance(h, floor, absolute=False)
    z = m.clone().requires_grad_(True)
    u = _u(energy, z)
    (grad,) = torch.autograd.grad(u, z)
    u = u.detach()
    D = m.numel()
    log_z = -float(u) + 0.5 * D * math.log(2 * math.pi) - 0.5 * float(torch.log(raised).sum())
    return Laplace(
        m,
        covariance,
        float(u),
        log_z,
        float(evals.min()),
        float(grad.norm()),
        starts,
        float(evals.max()),
    )


@dataclass
class GaussianStart:
    """Where a fit starts (``gaussian_start``): q0 = N(``mean``, ``covariance``) (float64), its
    ``elbo`` on ``draws`` common draws, and where it came from: ``source`` "origin" (N(0, scale²I),
    the paper's start), "laplace" (the Hessian at the lowest mode found) or "path" (a point along
    an L-BFGS path, Pathfinder's choice when p has no proper mode or the mode's Gaussian is
    worse) or "modes" (L-BFGS found ``modes`` > 1 distinct proper modes: the moment-matched
    mixture of their Laplace Gaussians, which covers them all, for a fit that anneals);
    ``laplace`` is the lowest mode's approximation whichever won (None when no start reached a
    finite U), ``candidates`` how many were scored."""

    mean: Tensor
    covariance: Tensor
    elbo: float
    source: str
    laplace: Laplace | None
    candidates: int
    draws: int
    modes: int = 1  # distinct proper modes found; > 1: source "modes", and the fit anneals

    @property
    def std(self) -> Tensor:
        return self.covariance.diagonal().sqrt()


def gaussian_elbo(energy: Energy, mean: Tensor, covariance: Tensor, eps: Tensor) -> float:
    """ELBO of N(mean, covariance) with the standard-normal draws ``eps`` (n, D):
    E[−U(m + Lε)] + ½ ln det(2πe Σ), Σ = LLᵀ; −inf when U is not finite at some draw (a Gaussian
    that puts mass where U is undefined is no start)."""
    return float(_elbo_terms(energy, mean, covariance, eps).mean())


def _elbo_terms(energy: Energy, mean: Tensor, covariance: Tensor, eps: Tensor) -> Tensor:
    """−U(m + Lε_i) + entropy for each draw (n,): their mean is ``gaussian_elbo``; −inf in every
    term where U is not finite at some draw."""
    L = cholesky(covariance)
    with torch.no_grad():
        u = energy(mean + eps @ L.T).to(torch.float64)
    D = mean.numel()
    entropy = 0.5 * D * (1 + math.log(2 * math.pi)) + float(L.diagonal().log().sum())
    if not bool(u.isfinite().all()):
        return torch.full_like(u, -math.inf)
    return entropy - u


def _better(new: Tensor, old: Tensor) -> bool:
    """Whether the ELBO terms ``new`` beat ``old`` (same draws) by more than noise: the paired
    difference's mean above twice its standard error (the draws are common, so a start is not
    chosen for one lucky set of them)."""
    if not bool(new.isfinite().all()):
        return False
    if not bool(old.isfinite().all()):
        return True
    d = new - old
    return float(d.mean()) > 2 * float(d.std()) / math.sqrt(len(d)) + 1e-9


def gaussian_start(
    energy: Energy,
    starts: int = 8,
    scale: float = 2.0,
    seed: int = 0,
    points_per_path: int = 6,
    draws: int = 256,
    floor: float = 1e-8,
    resolution: float = 0.0,
) -> GaussianStart:
    """The best Gaussian to start a fit from, by ELBO on ``draws`` common standard-normal draws:
    N(0, scale²·I) (the paper's start, "origin"), the Laplace approximation at the lowest mode
    ``find_mode`` reaches, or N(x, |H(x)|⁻¹) at one of up to ``points_per_path`` points spread
    along each start's L-BFGS path (log-spaced, so the end of the path, where the mass is, is
    sampled densely). The Laplace Gaussian is kept unless another candidate beats it by more
    than noise on the common draws (``_better``), so a start is not chosen for one lucky set of
    draws; without it, the candidate with the best mean ELBO, likewise. Where U is not finite at
    some draw of every candidate, the start is the origin's (the paper's), with ELBO −inf.

    ``resolution``: the relative precision of the fit's floating-point type (``RESOLUTION``);
    candidates narrower than that (``resolvable``) are left out. Down a funnel's neck, where U
    falls without bound, L-BFGS paths end at Gaussians whose sds are 1e-12 of their means (a
    centred stochastic-volatility posterior: ln σ = −32, every h_t equal to 12 digits): in
    float32 such a q's draws round to one point, its loss is rounding, and the fit stayed there
    with a "loss" of −538 whose float64 value is −1.1e10."""
    paths: list[list[Tensor]] = []
    ends: list[Tensor] = []
    try:
        mode, finite = find_mode(energy, starts, scale, seed, paths=paths, ends=ends)
    except NfcliError:  # no start reached a finite U: the paths' finite points may still serve
        mode, finite = None, 0
    D = energy.dim
    g = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn(draws, D, generator=g, dtype=torch.float64)
    scored: list[tuple[Tensor, Tensor, Tensor, str]] = []  # (ELBO terms, mean, cov, source)
    lap = None
    if mode is not None:
        with contextlib.suppress(RuntimeError, ValueError):  # U not twice differentiable there
            lap = laplace(energy, mode, finite, floor)
            scored.append(
                (
                    _elbo_terms(energy, lap.mode, lap.covariance, eps),
                    lap.mode,
                    lap.covariance,
                    "laplace",
                )
            )
    points = [x for path in paths for x in _spread(path, points_per_path)]
    curvatures: list[Tensor] = []
    if points:
        with contextlib.suppress(RuntimeError, ValueError):  # U not twice differentiable
            curvatures = list(hessians(energy, torch.stack(points)))
    for x, h in zip(points, curvatures, strict=False):
        with contextlib.suppress(RuntimeError, ValueError):
            cov, _ = _covariance(h, floor)
            scored.append((_elbo_terms(energy, x, cov, eps), x, cov, "path"))
    origin = torch.zeros(D, dtype=torch.float64)
    wide = torch.eye(D, dtype=torch.float64) * scale**2
    scored.append((_elbo_terms(energy, origin, wide, eps), origin, wide, "origin"))
    # the incumbent: the Laplace Gaussian if its ELBO is finite, else the best by mean; another
    # candidate replaces it only if better by more than noise
    finite_scored = [c for c in scored if bool(c[0].isfinite().all())] or scored
    if resolution > 0:  # what the fit's precision can hold (the origin's always can)
        finite_scored = [c for c in finite_scored if resolvable(c[1], c[2], resolution)]
        finite_scored = finite_scored or [scored[-1]]
    laplaces = [c for c in finite_scored if c[3] == "laplace"]
    best = laplaces[0] if laplaces else max(finite_scored, key=lambda c: float(c[0].mean()))
    for c in finite_scored:
        if _better(c[0], best[0]):
            best = c
    candidates = len(scored)
    modes = distinct_modes(energy, ends, floor) if lap is not None else []
    if len(modes) > 1:  # p has several modes: one Gaussian that covers them, annealed from
        mean, cov = moment_match(modes)
        terms = _elbo_terms(energy, mean, cov, eps)
        return GaussianStart(
            mean, cov, float(terms.mean()), "modes", lap, candidates + 1, draws, len(modes)
        )
    terms, mean, cov, source = best
    elbo = float(terms.mean())
    return GaussianStart(mean, cov, elbo, source, lap, candidates, draws, max(1, len(modes)))


# a Gaussian start must be at least this many rounding units of the fit's type wide, relative to
# its location, in every coordinate (``resolvable``): float32's eps is 1.2e-7, so 1.2e-6 (a
# neck's candidates were at 1.8e-12; the narrowest proper posterior of benchmarks/: 0.07)
RESOLUTION_ULPS = 10.0


def resolution(dtype: torch.dtype) -> float:
    """The relative width below which a fit in ``dtype`` cannot resolve q (``RESOLUTION_ULPS``)."""
    return RESOLUTION_ULPS * torch.finfo(dtype).eps


def resolvable(mean: Tensor, covariance: Tensor, relative: float) -> bool:
    """Whether N(mean, covariance) is wider than ``relative`` × |mean| in every coordinate."""
    sd = covariance.diagonal().clamp_min(0).sqrt()
    return bool((sd >= relative * mean.abs()).all())


def distinct_modes(energy: Energy, ends: list[Tensor], floor: float = 1e-8) -> list[Laplace]:
    """The proper modes (``_is_proper``) among L-BFGS's end points, one Laplace approximation each,
    lowest U first; two ends are the same mode when each lies within 3 sds (of the other's
    Laplace Gaussian, in every coordinate) of the other."""
    found: list[Laplace] = []
    for x in sorted(ends, key=lambda x: float(_u(energy, x).detach())):
        try:
            lap = laplace(energy, x, 1, floor)
        except (RuntimeError, ValueError):
            continue
        if not _is_proper(lap):
            continue
        if all(
            ((lap.mode - f.mode).abs() > 3 * torch.minimum(f.std, lap.std)).any() for f in found
        ):
            found.append(lap)
    return found


def _is_proper(lap: Laplace) -> bool:
    """A proper mode (``is_minimum``) at the Laplace approximation's point."""
    values = (lap.energy, lap.gradient_norm, lap.min_curvature, lap.max_curvature)
    return bool(is_minimum(*(torch.tensor(v, dtype=torch.float64) for v in values)))


def is_minimum(
    energy: Tensor, gradient_norm: Tensor, min_curvature: Tensor, max_curvature: Tensor
) -> Tensor:
    """Where a point is a proper minimum of U, elementwise over points: U finite, ∇U ≈ 0
    (‖∇U‖ ≤ 1e-5·(1 + |U|)), every curvature positive (the smallest eigenvalue of ∇²U above 1e-9
    of the largest)."""
    return (
        torch.isfinite(energy)
        & (gradient_norm <= 1e-5 * (1 + energy.abs()))
        & (min_curvature > 1e-9 * max_curvature)
    )


def moment_match(modes: list[Laplace], log_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and covariance of the mixture Σ_k w_k N(m_k, Σ_k) of the modes' Laplace Gaussians,
    w = softmax(``log_weights``), by default each mode's Laplace ln Z (its share of the mass)."""
    if log_weights is None:
        log_weights = torch.tensor([m.log_z for m in modes], dtype=torch.float64)
    w = torch.softmax(log_weights.double(), 0)
    means = torch.stack([m.mode for m in modes])
    mean = (w[:, None] * means).sum(0)
    d = means - mean
    cov = sum(
        wi * (m.covariance + torch.outer(di, di)) for wi, m, di in zip(w, modes, d, strict=True)
    )
    return mean, 0.5 * (cov + cov.T)


def _spread(path: list[Tensor], n: int) -> list[Tensor]:
    """Up to n points of ``path``, at indices log-spaced back from its end (the last included)."""
    if len(path) <= n:
        return list(path)
    last = len(path) - 1
    steps = torch.logspace(0, math.log10(last + 1), n, dtype=torch.float64) - 1
    idx = sorted({last - round(float(s)) for s in steps})
    return [path[i] for i in idx]


def proper_mode(energy: Energy, centre: Tensor, max_iter: int = 500) -> Tensor | None:
    """The proper mode of p (``_is_proper``) that L-BFGS reaches from ``centre`` (D,), or None:
    what tells a proper target whose q is still travelling to its mass from an improper one
    (``nfcli.improper.travelling``). An improper U has no such point: L-BFGS runs off (U without a
    lower bound), or stops where U is flat in some direction (a free variable, a valley of
    constant depth)."""
    try:
        mode, _ = find_mode(energy, points=[centre], max_iter=max_iter)
        lap = laplace(energy, mode)
    except (NfcliError, RuntimeError, ValueError):
        return None
    return mode if _is_proper(lap) else None


def mode_and_laplace(energy: Energy, starts: int = 4, seed: int = 0) -> Laplace:
    """``find_mode`` then ``laplace``."""
    mode, finite = find_mode(energy, starts, seed=seed)
    return laplace(energy, mode, finite)
