"""A latent Gaussian process with Poisson counts, in the centred parametrisation: the 25 latent
values are the coordinates, strongly correlated a priori (neighbours at correlation 0.96).

Data (synthetic, generated here with numpy's default_rng(20240606)): inputs x_i = 10·(i − 1)/24,
i = 1..25 (evenly spaced on [0, 10]); a function f drawn from the prior below; counts
y_i ~ Poisson(exp(1 + f_i)).

Model (fixed hyperparameters):
    f ~ N(0, K),  K_ij = exp(−(x_i − x_j)²/(2·1.5²)) + 10⁻⁴·[i = j]
        (amplitude 1, lengthscale 1.5, a small nugget that keeps K well defined),
    y_i | f ~ Poisson(exp(1 + f_i)).
Coordinates: z = (f_1..f_25). With L the Cholesky factor of K (K = L Lᵀ), up to a constant,

    U = ½ ‖L⁻¹ f‖² + Σ_i [exp(1 + f_i) − y_i (1 + f_i)].
"""

import numpy as np
import torch

N_POINTS, LENGTHSCALE, NUGGET, OFFSET = 25, 1.5, 1e-4, 1.0
NAMES = [f"f_{i}" for i in range(1, N_POINTS + 1)]
INPUTS = np.linspace(0.0, 10.0, N_POINTS)
KERNEL = np.exp(-((INPUTS[:, None] - INPUTS[None, :]) ** 2) / (2 * LENGTHSCALE**2))
KERNEL += NUGGET * np.eye(N_POINTS)
L_INV = np.linalg.inv(np.linalg.cholesky(KERNEL))  # float64, once


def _counts(seed: int = 20240606) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.linalg.cholesky(KERNEL) @ rng.standard_normal(N_POINTS)
    return rng.poisson(np.exp(OFFSET + f)).astype(float)


Y = _counts()


def energy(z: torch.Tensor) -> torch.Tensor:
    l_inv = torch.as_tensor(L_INV, dtype=z.dtype)
    y = torch.as_tensor(Y, dtype=z.dtype)
    prior = 0.5 * ((z @ l_inv.T) ** 2).sum(-1)
    log_rate = OFFSET + z
    return prior + (torch.exp(log_rate) - y * log_rate).sum(-1)
