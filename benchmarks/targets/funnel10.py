"""Neal's funnel in 10-D: v ~ N(0, 3²), x_i | v ~ N(0, eᵛ) for i = 1 … 9.

U = v²/18 + ½ Σ x_i² e^{−v} + (9/2) v, so ln Z = ln 3 + 5 ln 2π exactly (a normalised density
times 3·(2π)^5). The neck (v ≪ 0) is the classic hard case for variational fits.
"""

import math

import torch

DIM = 10
LOG_Z = math.log(3) + 5 * math.log(2 * math.pi)


def energy(z: torch.Tensor) -> torch.Tensor:
    v, x = z[:, 0], z[:, 1:]
    return v**2 / 18 + 0.5 * (x**2).sum(-1) * torch.exp(-v) + 0.5 * (DIM - 1) * v
