"""Two overlapping modes in 8-D with unequal weights: 0.7 N(μ, I) + 0.3 N(−μ, I), μ = 1.5·1/√8
(centres 3 sds apart along the diagonal: a shoulder rather than a gap, the easy mixture).

U = −ln of the normalised mixture, so ln Z = 0 exactly. The nearest-centre cells (the half-spaces
either side of the origin) hold 0.7·Φ(1.5) + 0.3·Φ(−1.5) = 0.673 and 0.327 of the mass, not 0.7
and 0.3: the components overlap.
"""

import math

import torch

DIM = 8
WEIGHTS = (0.7, 0.3)
SD = 1.0
CENTRES = ((1.5 / math.sqrt(DIM),) * DIM, (-1.5 / math.sqrt(DIM),) * DIM)
LOG_Z = 0.0


def energy(z: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(CENTRES, dtype=z.dtype)  # (K, D)
    log_w = torch.log(torch.as_tensor(WEIGHTS, dtype=z.dtype))
    sq = ((z[:, None, :] - mu) ** 2).sum(-1) / SD**2  # (N, K)
    log_n = -0.5 * sq - DIM * (math.log(SD) + 0.5 * math.log(2 * math.pi))
    return -torch.logsumexp(log_w + log_n, -1)
