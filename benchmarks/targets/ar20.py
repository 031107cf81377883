"""A correlated Gaussian in 20-D: an AR(1) chain, corr(z_i, z_j) = 0.8^|i−j|, with sds log-spaced
from 0.5 to 2, so Σ_ij = s_i s_j 0.8^|i−j| (condition number 348). The sanity target: every
sampler should get it right, at different speeds.

U = ½ zᵀ Σ⁻¹ z, so ln Z = (D/2) ln 2π + ½ ln det Σ, det Σ = Π s_i² · (1 − ρ²)^(D−1) exactly.
The true means are 0 and the true sds SDS.
"""

import math

import torch

DIM, RHO = 20, 0.8
SDS = torch.logspace(math.log10(0.5), math.log10(2.0), DIM, dtype=torch.float64)
_I = torch.arange(DIM, dtype=torch.float64)
_LAG = (_I[:, None] - _I[None, :]).abs()
COV = SDS[:, None] * SDS[None, :] * RHO**_LAG
_PREC = torch.linalg.inv(COV)
LOG_Z = (
    0.5 * DIM * math.log(2 * math.pi)
    + float(torch.log(SDS).sum())
    + 0.5 * (DIM - 1) * math.log(1 - RHO**2)
)


def energy(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((z @ _PREC.to(z)) * z).sum(-1)
