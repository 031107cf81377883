"""Logistic regression with 100 correlated predictors and a N(0, 1) prior: 100-D, with the
posterior correlated along the predictors' correlation.

Data (synthetic, generated here with numpy's default_rng(20240608)): n = 400 rows of predictors
x_i ~ N(0, Σ), Σ_jk = 0.9^|j − k| (an AR(1) correlation: neighbouring predictors are nearly
collinear); true coefficients β_j = ±1 (alternating) for j = 1..10 and N(0, 0.1²) for the other
90; y_i ~ Bernoulli(logistic(x_iᵀβ)).

Model: β_j ~ N(0, 1) independently for j = 1..100 (no intercept),
y_i ~ Bernoulli(logistic(x_iᵀβ)). Coordinates: z = β (100-D). Up to a constant,

    U = ‖β‖²/2 + Σ_i [softplus(x_iᵀβ) − y_i · x_iᵀβ].
"""

import numpy as np
import torch

DIM_BETA, N_ROWS, RHO = 100, 400, 0.9
NAMES = [f"beta_{j}" for j in range(1, DIM_BETA + 1)]


def _data(seed: int = 20240608) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lags = np.abs(np.arange(DIM_BETA)[:, None] - np.arange(DIM_BETA)[None, :])
    chol = np.linalg.cholesky(RHO**lags)
    x = rng.standard_normal((N_ROWS, DIM_BETA)) @ chol.T
    beta = np.concatenate([np.tile([1.0, -1.0], 5), rng.normal(0, 0.1, DIM_BETA - 10)])
    y = rng.binomial(1, 1 / (1 + np.exp(-x @ beta))).astype(float)
    return x, y


X, Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(X, dtype=z.dtype)
    y = torch.as_tensor(Y, dtype=z.dtype)
    eta = z @ x.T  # (N, n)
    likelihood = (torch.nn.functional.softplus(eta) - y * eta).sum(-1)
    return (z**2).sum(-1) / 2 + likelihood
