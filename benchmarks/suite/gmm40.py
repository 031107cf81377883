"""40 equal-weight unit Gaussians in 2-D with means uniform in [−40, 40]² (the sampling suite's
GMM of Midgley et al. 2023 and Blessing et al. 2024). Their means are drawn by JAX's PRNG with
key 0 there; here by numpy's default_rng(SEED), recorded below.

U = −ln (1/40) Σ_k N(z; μ_k, I) is the normalised density's −ln, so ln Z = 0 exactly; each
mode holds 1/40 of the mass (neighbouring means can be a few sds apart, so a draw's nearest mean
is its component only approximately: the benchmark scores shares by nearest mean against the
exact shares of those cells, CELL_SHARES, computed by sampling p).
"""

import math

import numpy as np
import torch

SEED = 0
K = 40
MEANS = np.random.default_rng(SEED).uniform(-40.0, 40.0, size=(K, 2))
NAMES = ["x", "y"]
LOG_Z = 0.0
CENTRES = MEANS.tolist()


def energy(z: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(MEANS, dtype=z.dtype)
    sq = ((z[:, None, :] - mu) ** 2).sum(-1)  # (N, K)
    log_n = -0.5 * sq - math.log(2 * math.pi)
    return -(torch.logsumexp(log_n, -1) - math.log(K))


def exact_draws(n: int, seed: int = 0) -> np.ndarray:
    """n draws of p: a component uniformly, then its Gaussian."""
    g = np.random.default_rng(seed)
    k = g.integers(K, size=n)
    return MEANS[k] + g.standard_normal((n, 2))
