"""Hierarchical logistic regression: 50 groups (clinics) of very unequal sizes, non-centred group
intercepts and two patient-level predictors; 54-D.

Data (synthetic, generated here with numpy's default_rng(20240607)): group sizes
n_j = 1 + ⌊LogNormal(ln 8, 1²)⌋ clipped to ≤ 150 (several groups of 1–3 patients, a few of
~50–150); per patient, severity ~ N(0, 1) (standardised) and treated ~ Bernoulli(0.5);
outcome ~ Bernoulli(logistic(α_j + 0.7·severity − 0.4·treated)) with α_j ~ N(−0.5, 0.8²).

Model:
    μ ~ N(0, 2²),  τ ~ HalfNormal(1),  β_1, β_2 ~ N(0, 1),  η_j ~ N(0, 1),  α_j = μ + τ·η_j,
    outcome_i ~ Bernoulli(logistic(α_{g(i)} + β_1·severity_i + β_2·treated_i)).
Coordinates (54-D, unconstrained): z = (μ, ln τ, β_1, β_2, η_1..η_50), with the log-Jacobian of
τ = exp(ln τ). With λ_i = α_{g(i)} + β_1 severity_i + β_2 treated_i, up to a constant,

    U = μ²/8 + (τ²/2 − ln τ) + (β_1² + β_2²)/2 + Σ_j η_j²/2
        + Σ_i [softplus(λ_i) − outcome_i · λ_i].
"""

import numpy as np
import torch

N_GROUPS = 50
NAMES = ["mu", "log_tau", "beta_severity", "beta_treated"] + [
    f"eta_{j}" for j in range(1, N_GROUPS + 1)
]


def _data(seed: int = 20240607) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.minimum(1 + np.floor(rng.lognormal(np.log(8), 1.0, N_GROUPS)), 150).astype(int)
    group = np.repeat(np.arange(N_GROUPS), sizes)
    n = group.size
    severity = rng.normal(0, 1, n)
    treated = rng.binomial(1, 0.5, n).astype(float)
    alpha = rng.normal(-0.5, 0.8, N_GROUPS)
    logit = alpha[group] + 0.7 * severity - 0.4 * treated
    outcome = rng.binomial(1, 1 / (1 + np.exp(-logit))).astype(float)
    return group, severity, treated, outcome


GROUP, SEVERITY, TREATED, OUTCOME = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    severity = torch.as_tensor(SEVERITY, dtype=z.dtype)
    treated = torch.as_tensor(TREATED, dtype=z.dtype)
    outcome = torch.as_tensor(OUTCOME, dtype=z.dtype)
    group = torch.as_tensor(GROUP)
    mu, log_tau, b1, b2, eta = z[:, 0], z[:, 1], z[:, 2], z[:, 3], z[:, 4:]
    tau = torch.exp(log_tau)
    alpha = mu[:, None] + tau[:, None] * eta  # (N, groups)
    lam = alpha[:, group] + b1[:, None] * severity + b2[:, None] * treated  # (N, patients)
    prior = mu**2 / 8 + tau**2 / 2 - log_tau + (b1**2 + b2**2) / 2 + (eta**2).sum(-1) / 2
    likelihood = (torch.nn.functional.softplus(lam) - outcome * lam).sum(-1)
    return prior + likelihood
