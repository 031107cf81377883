"""Three equal Gaussians in 4-D, every two centres 8 sds apart: (1/3) Σ_k N(μ_k, I) with
μ_k = (8/√2)·e_k, k = 1, 2, 3.

U is the normalised density's −ln, so ln Z = 0 exactly; each mode holds 1/3 of the mass, and a
draw's nearest centre is its component (to within Φ(−4) ≈ 3e-5).
"""

import math

import torch

DIM = 4
SPACING = 8.0
CENTRES = [[SPACING / math.sqrt(2) if d == k else 0.0 for d in range(DIM)] for k in range(3)]
SHARES = [1 / 3] * 3
LOG_Z = 0.0


def energy(z: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(CENTRES, dtype=z.dtype)
    sq = ((z[:, None, :] - mu) ** 2).sum(-1)
    log_n = -0.5 * sq - 0.5 * DIM * math.log(2 * math.pi)
    return -(torch.logsumexp(log_n, -1) - math.log(3))
