"""Two-parameter logistic item-response model: 6 items answered by 28 persons, hierarchical
(centred) item discriminations and difficulties; 44-D.

Data (synthetic, generated here with numpy's default_rng(20240612)): every person answers every
item; abilities θ_j ~ N(0, 1), log-discriminations ln a_i ~ N(0.2, 0.3²), difficulties
b_i ~ N(0, 1); y_ij ~ Bernoulli(logistic(a_i (θ_j − b_i))).

Model (I = 6 items, J = 28 persons):
    μ_a ~ N(0, 1),  σ_a ~ HalfNormal(0.5),  μ_b ~ N(0, 2²),  σ_b ~ HalfNormal(2),
    ln a_i ~ N(μ_a, σ_a²),  b_i ~ N(μ_b, σ_b²),  θ_j ~ N(0, 1),
    y_ij ~ Bernoulli(logistic(a_i (θ_j − b_i))).
θ ~ N(0, 1) fixes the scale's location and size, a_i > 0 its sign. (With σ_a ~ HalfNormal(1)
the posterior reaches a_i ≈ 8, nearly step-shaped likelihoods where even NUTS diverges.)
Coordinates (44-D, unconstrained): z = (μ_a, ln σ_a, μ_b, ln σ_b, ln a_1..ln a_6, b_1..b_6,
θ_1..θ_28), with the log-Jacobians of σ_a, σ_b = exp(·) (ln a_i is itself the modelled
quantity). With ℓ_ij = a_i (θ_j − b_i), up to a constant,

    U = μ_a²/2 + (2σ_a² − ln σ_a) + μ_b²/8 + (σ_b²/8 − ln σ_b)
        + Σ_i (ln a_i − μ_a)²/(2σ_a²) + I ln σ_a + Σ_i (b_i − μ_b)²/(2σ_b²) + I ln σ_b
        + Σ_j θ_j²/2 + Σ_ij [softplus(ℓ_ij) − y_ij ℓ_ij].

Six items say little about σ_a and σ_b: the item parameters sit in funnels over them.
"""

import numpy as np
import torch

N_ITEMS, N_PERSONS = 6, 28
NAMES = (
    ["mu_log_a", "log_sigma_log_a", "mu_b", "log_sigma_b"]
    + [f"log_a_{i}" for i in range(1, N_ITEMS + 1)]
    + [f"b_{i}" for i in range(1, N_ITEMS + 1)]
    + [f"theta_{j}" for j in range(1, N_PERSONS + 1)]
)


def _data(seed: int = 20240612) -> np.ndarray:
    """Responses y (persons × items)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, N_PERSONS)
    a, b = np.exp(rng.normal(0.2, 0.3, N_ITEMS)), rng.normal(0, 1, N_ITEMS)
    logit = a * (theta[:, None] - b)
    return rng.binomial(1, 1 / (1 + np.exp(-logit))).astype(float)


Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(Y, dtype=z.dtype)
    mu_a, log_sigma_a, mu_b, log_sigma_b = z[:, :4].unbind(-1)
    log_a, b = z[:, 4 : 4 + N_ITEMS], z[:, 4 + N_ITEMS : 4 + 2 * N_ITEMS]
    theta = z[:, 4 + 2 * N_ITEMS :]
    sigma_a, sigma_b = torch.exp(log_sigma_a), torch.exp(log_sigma_b)
    prior = mu_a**2 / 2 + 2 * sigma_a**2 - log_sigma_a + mu_b**2 / 8 + sigma_b**2 / 8 - log_sigma_b
    prior += ((log_a - mu_a[:, None]) ** 2).sum(-1) / (2 * sigma_a**2) + N_ITEMS * log_sigma_a
    prior += ((b - mu_b[:, None]) ** 2).sum(-1) / (2 * sigma_b**2) + N_ITEMS * log_sigma_b
    prior += (theta**2).sum(-1) / 2
    logit = torch.exp(log_a)[:, None, :] * (theta[:, :, None] - b[:, None, :])  # (N, J, I)
    likelihood = (torch.nn.functional.softplus(logit) - y * logit).sum((-2, -1))
    return prior + likelihood
