"""An 8-D correlated Gaussian, condition number 100: a fixed rotation of variances from 0.1 to 10.

U(z) = ½ zᵀ Σ⁻¹ z with Σ = Q diag(λ) Qᵀ, λ log-spaced on [0.1, 10], Q a fixed rotation (seeded), so
ln Z = (D/2) ln 2π + ½ Σ ln λ exactly. Tests correlation and scale, which axis-aligned layers miss.
"""

import math

import torch

DIM = 8
_LAM = torch.logspace(-1, 1, DIM, dtype=torch.float64)
_Q, _ = torch.linalg.qr(
    torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
)
_PREC = (_Q / _LAM) @ _Q.T
LOG_Z = 0.5 * DIM * math.log(2 * math.pi) + 0.5 * float(torch.log(_LAM).sum())


def energy(z: torch.Tensor) -> torch.Tensor:
    prec = _PREC.to(z)
    return 0.5 * ((z @ prec) * z).sum(-1)
