"""A mode away from where a search starts, in 6-D: 0.75 N(0, I) + 0.25 N(μ, I), μ = (10/√6)·1,
10 sds from the main mode. The weighted components are equal 4.89 sds from the origin along μ,
so the main mode's basin holds the origin and all but 0.7% of N(0, 2²I), where the L-BFGS search
for a fit's start begins (nfcli/mode.py): the case of a fit that loses a mode.

U = −ln of the normalised mixture, so ln Z = 0 exactly; the nearest-centre cells hold the weights
0.75 and 0.25 to within Φ(−5) ≈ 3e-7. A fit that keeps only the main mode, q ≈ N(0, I), has
KL(q‖p) ≈ ln(4/3) = 0.29.
"""

import math

import torch

DIM = 6
WEIGHTS = (0.75, 0.25)
SD = 1.0
CENTRES = ((0.0,) * DIM, (10 / math.sqrt(DIM),) * DIM)
LOG_Z = 0.0


def energy(z: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(CENTRES, dtype=z.dtype)  # (K, D)
    log_w = torch.log(torch.as_tensor(WEIGHTS, dtype=z.dtype))
    sq = ((z[:, None, :] - mu) ** 2).sum(-1) / SD**2  # (N, K)
    log_n = -0.5 * sq - DIM * (math.log(SD) + 0.5 * math.log(2 * math.pi))
    return -torch.logsumexp(log_w + log_n, -1)
