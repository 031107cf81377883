"""Where the posterior is: the mode of p ∝ exp(−U) and the Laplace approximation there.

A fit started from N(0, 2²) has to travel to the mass first; for a badly scaled posterior (a
regression with predictors on very different scales) that journey is most of the fit, or all of
it. ``find_mode`` minimises U by L-BFGS with a strong-Wolfe line search in float64 from a few
starts, and ``laplace`` turns the best mode into the Gaussian N(m, H⁻¹), H = ∇²U(m), with the
Laplace estimate of ln Z:

    ln Z ≈ −U(m) + (D/2) ln 2π − ½ ln det H.

Nothing here fits a flow; a fit can start from the result (issue 13's "start where the posterior
is").
"""

from __future__ import annotations

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
) -> tuple[Tensor, int]:
    """The lowest minimum of U that L-BFGS (float64, strong Wolfe) finds from the origin and
    ``starts`` − 1 draws of N(0, scale²); and how many starts reached a finite U. Raises an
    NfcliError when none did."""
    D = energy.dim
    g = torch.Generator().manual_seed(seed)
    points = [torch.zeros(D, dtype=torch.float64)]
    points += [torch.randn(D, generator=g, dtype=torch.float64) * scale for _ in range(starts - 1)]
    best, best_u, finite = None, math.inf, 0
    for start in points:
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

        def closure(z: Tensor = z, opt: torch.optim.LBFGS = opt) -> Tensor:
            opt.zero_grad()
            u = _u(energy, z)
            if torch.isfinite(u):
                u.backward()
            return u

        try:
            opt.step(closure)
        except RuntimeError:  # a line search that met NaN: this start is lost
            continue
        with torch.no_grad():
            u = float(_u(energy, z))
        if math.isfinite(u):
            finite += 1
            if u < best_u:
                best, best_u = z.detach().clone(), u
    if best is None:
        raise NfcliError(
            f"Could not find a mode of U: from each of {len(points)} starts (the origin and draws "
            f"of N(0, {scale:g}²)) U was not finite or the search broke down. Check that U is "
            "finite somewhere near the origin, or fit without a mode-finding start."
        )
    return best, finite


def laplace(energy: Energy, mode: Tensor, starts: int = 1, floor: float = 1e-8) -> Laplace:
    """The Laplace approximation at ``mode`` (see the module docstring), with H from autograd
    (O(D²) evaluations' worth of work: meant for the tens to hundreds of dimensions of a
    posterior). Eigenvalues of H below ``floor`` × its largest are raised to that, so that the
    covariance is always positive definite; ``min_curvature`` keeps the raw smallest one."""
    m = mode.detach().to(torch.float64)
    hessian = torch.autograd.functional.hessian(lambda z: _u(energy, z), m)
    hessian = 0.5 * (hessian + hessian.T)
    evals, evecs = torch.linalg.eigh(hessian)
    raised = evals.clamp_min(floor * float(evals.abs().max().clamp_min(1e-300)))
    covariance = (evecs / raised) @ evecs.T
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
    )


def mode_and_laplace(energy: Energy, starts: int = 4, seed: int = 0) -> Laplace:
    """``find_mode`` then ``laplace``."""
    mode, finite = find_mode(energy, starts, seed=seed)
    return laplace(energy, mode, finite)
