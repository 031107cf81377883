"""Regularised horseshoe regression (Piironen & Vehtari 2017): 10 predictors, 60 observations,
3 of the coefficients clearly nonzero and 1 small; β centred given the scales; 23-D.

Data (synthetic, generated here with numpy's default_rng(20240611)): X (60 × 10) with
independent N(0, 1) entries; y = Xβ + N(0, 1) noise with β = (3, −2, 1, 0.5, 0, 0, 0, 0, 0, 0).
No intercept (the data have none).

Model (p = 10 predictors, n = 60 observations):
    λ_j ~ HalfCauchy(1),  τ ~ HalfCauchy(τ_0),  c² ~ InvGamma(ν/2, ν s²/2),  σ ~ HalfNormal(2),
    λ̃_j² = c² λ_j² / (c² + τ² λ_j²),  β_j ~ N(0, τ² λ̃_j²),  y_i ~ N(x_iᵀβ, σ²),
with ν = 4, s = 2 (the slab) and τ_0 = p_0/(p − p_0)/√n for p_0 = 3 expected nonzero
coefficients (σ guessed as 1), as the paper recommends.
Coordinates (23-D, unconstrained): z = (β_1..β_10, ln λ_1..ln λ_10, ln τ, ln c, ln σ), with the
log-Jacobians of λ_j, τ, σ = exp(·) and, for c² = e^{2 ln c}, of 2c². Up to a constant,

    U = Σ_j [β_j²/(2τ²λ̃_j²) + ln λ̃_j] + p ln τ + Σ_j [ln(1 + λ_j²) − ln λ_j]
        + [ln(1 + τ²/τ_0²) − ln τ] + [ν ln c + ν s²/(2c²)] + [σ²/8 − ln σ]
        + Σ_i (y_i − x_iᵀβ)²/(2σ²) + n ln σ.

The null coefficients' β_j are pinned to 0 as τλ̃_j → 0: funnels in (β_j, ln λ_j, ln τ), and heavy
(Cauchy) tails in the λ_j. The non-centred form (β_j = τ λ̃_j η_j) is the usual remedy.
"""

import math

import numpy as np
import torch

N, P, P0 = 60, 10, 3
NU, SLAB_SCALE = 4.0, 2.0
TAU0 = P0 / (P - P0) / math.sqrt(N)
NAMES = (
    [f"beta_{j}" for j in range(1, P + 1)]
    + [f"log_lambda_{j}" for j in range(1, P + 1)]
    + ["log_tau", "log_c", "log_sigma"]
)


def _data(seed: int = 20240611) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (N, P))
    beta = np.array([3.0, -2.0, 1.0, 0.5] + [0.0] * (P - 4))
    y = x @ beta + rng.normal(0, 1.0, N)
    return x, y


X, Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x, y = torch.as_tensor(X, dtype=z.dtype), torch.as_tensor(Y, dtype=z.dtype)
    beta, log_lam = z[:, :P], z[:, P : 2 * P]
    log_tau, log_c, log_sigma = z[:, 2 * P :].unbind(-1)
    lam, sigma = torch.exp(log_lam), torch.exp(log_sigma)
    tau, c = torch.exp(log_tau)[:, None], torch.exp(log_c)[:, None]
    lam_tilde2 = c**2 * lam**2 / (c**2 + tau**2 * lam**2)  # (N, P)
    prior_beta = (beta**2 / (2 * tau**2 * lam_tilde2) + 0.5 * torch.log(lam_tilde2)).sum(-1)
    prior_beta += P * log_tau
    prior_lam = (torch.log1p(lam**2) - log_lam).sum(-1)
    prior_tau = torch.log1p(tau[:, 0] ** 2 / TAU0**2) - log_tau
    prior_c = NU * log_c + NU * SLAB_SCALE**2 / (2 * c[:, 0] ** 2)
    prior_sigma = sigma**2 / 8 - log_sigma
    likelihood = ((y - beta @ x.T) ** 2).sum(-1) / (2 * sigma**2) + N * log_sigma
    return prior_beta + prior_lam + prior_tau + prior_c + prior_sigma + likelihood
