"""Two modes in 20-D with unequal weights: 0.6 N(μ, I) + 0.4 N(−μ, I), μ = 2.5·1/√20 (centres
5 sds apart along the diagonal, a gap of 3.1 nats between them on the line joining them).

U = −ln of the normalised mixture, so ln Z = 0 exactly. The nearest-centre cells (the half-spaces
either side of the origin) hold 0.6·Φ(2.5) + 0.4·Φ(−2.5) = 0.596 and 0.404 of the mass.
"""

import math

import torch

DIM = 20
WEIGHTS = (0.6, 0.4)
SD = 1.0
CENTRES = ((2.5 / math.sqrt(DIM),) * DIM, (-2.5 / math.sqrt(DIM),) * DIM)
LOG_Z = 0.0


def energy(z: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(CENTRES, dtype=z.dtype)  # (K, D)
    log_w = torch.log(torch.as_tensor(WEIGHTS, dtype=z.dtype))
    sq = ((z[:, None, :] - mu) ** 2).sum(-1) / SD**2  # (N, K)
    log_n = -0.5 * sq - DIM * (math.log(SD) + 0.5 * math.log(2 * math.pi))
    return -torch.logsumexp(log_w + log_n, -1)
