"""Logistic regression on unstandardised predictors, as a user would pass them: the posterior's
scales differ by ~10⁵ across coordinates and the intercept is strongly correlated with the
raw-scale slopes.

Data (synthetic, generated here with numpy's default_rng(20240601)): n = 300 customers with
    age      ~ N(45, 12²) years, rounded, clipped to [18, 90];
    income   ~ N(50 000, 20 000²) dollars, rounded, clipped to ≥ 5 000;
    female   ~ Bernoulli(0.5);
    children ~ Poisson(1.3);
    visits   ~ Poisson(4)  (store visits last month);
    bought   ~ Bernoulli(logistic(η)),
        η = −4 + 0.04·age + 3·10⁻⁵·income + 0.5·female − 0.3·children + 0.1·visits.

Model: β_j ~ N(0, 10²) independently for j = 0..5 (intercept and the five raw predictors),
bought_i ~ Bernoulli(logistic(x_iᵀβ)), x_i = (1, age, income, female, children, visits).
Coordinates: z = β (6-D, already unconstrained). Up to a constant,

    U = Σ_j β_j²/200 + Σ_i [softplus(x_iᵀβ) − bought_i · x_iᵀβ].
"""

import numpy as np
import torch

NAMES = ["intercept", "age", "income", "female", "children", "visits"]
TRUE_BETA = [-4.0, 0.04, 3e-5, 0.5, -0.3, 0.1]
PRIOR_SD = 10.0


def _data(n: int = 300, seed: int = 20240601) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    age = np.clip(np.round(rng.normal(45, 12, n)), 18, 90)
    income = np.maximum(np.round(rng.normal(50_000, 20_000, n)), 5_000)
    female = rng.binomial(1, 0.5, n).astype(float)
    children = rng.poisson(1.3, n).astype(float)
    visits = rng.poisson(4.0, n).astype(float)
    x = np.column_stack([np.ones(n), age, income, female, children, visits])
    bought = rng.binomial(1, 1 / (1 + np.exp(-x @ np.array(TRUE_BETA)))).astype(float)
    return x, bought


X, Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(X, dtype=z.dtype)
    y = torch.as_tensor(Y, dtype=z.dtype)
    eta = z @ x.T  # (N, n)
    likelihood = (torch.nn.functional.softplus(eta) - y * eta).sum(-1)
    return (z**2).sum(-1) / (2 * PRIOR_SD**2) + likelihood
