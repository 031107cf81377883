"""Three far-apart modes in 4-D with unequal weights: Σ_k w_k N(μ_k, I), w = (0.5, 0.3, 0.2),
μ_k = 5.66·e_k (k = 1, 2, 3), so every two centres are 8 sds apart.

U = −ln Σ_k w_k N(z; μ_k, I) is the normalised density's −ln, so ln Z = 0 exactly. A fit or a
chain that misses a mode is off by its whole weight; with modes this far apart each draw's nearest
centre is its component (to within Φ(−4) ≈ 3e-5).
"""

import math

import torch

DIM = 4
WEIGHTS = (0.5, 0.3, 0.2)
SD = 1.0
CENTRES = tuple(tuple(5.66 if d == k else 0.0 for d in range(DIM)) for k in range(3))
LOG_Z = 0.0


def energy(z: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(CENTRES, dtype=z.dtype)  # (K, D)
    log_w = torch.log(torch.as_tensor(WEIGHTS, dtype=z.dtype))
    sq = ((z[:, None, :] - mu) ** 2).sum(-1) / SD**2  # (N, K)
    log_n = -0.5 * sq - DIM * (math.log(SD) + 0.5 * math.log(2 * math.pi))
    return -torch.logsumexp(log_w + log_n, -1)
