"""A mixture of 10 Student-t distributions in 10-D (after the sampling suite's "MoS" of Blessing
et al. 2024, which has 10 components with ν = 2 in 50-D): equal weights, ν = 2, unit scale,
locations uniform in [−10, 10]¹⁰ drawn by numpy's default_rng(SEED).

Each component is a product of D independent Student-t(ν) coordinates (as in the suite), so
U = −ln (1/10) Σ_k Π_d t_ν(z_d − μ_kd) is normalised: ln Z = 0. With ν = 2 the components have no
variance, so the benchmark scores mode shares (nearest location) and ln Z, not moments; the exact
cell shares come from sampling p (``exact_draws``).
"""

import math

import numpy as np
import torch

SEED = 0
K, DIM, NU = 10, 10, 2.0
CENTRES = np.random.default_rng(SEED).uniform(-10.0, 10.0, size=(K, DIM)).tolist()
LOG_Z = 0.0
_LOG_C = math.lgamma((NU + 1) / 2) - math.lgamma(NU / 2) - 0.5 * math.log(NU * math.pi)


def energy(z: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(CENTRES, dtype=z.dtype)
    x = z[:, None, :] - mu  # (N, K, D)
    log_t = _LOG_C - 0.5 * (NU + 1) * torch.log1p(x**2 / NU)
    return -(torch.logsumexp(log_t.sum(-1), -1) - math.log(K))


def exact_draws(n: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    k = g.integers(K, size=n)
    return np.asarray(CENTRES)[k] + g.standard_t(NU, size=(n, DIM))
