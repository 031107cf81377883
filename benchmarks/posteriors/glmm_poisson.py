"""Poisson GLMM with group and observation-level random effects (overdispersed counts): 50
counts in 10 groups, centred random effects; 64-D.

Data (synthetic, generated here with numpy's default_rng(20240613)): 10 groups of 5 counts;
x_i ~ N(0, 1); y_i ~ Poisson(exp(1 + 0.5 x_i + u_{g(i)} + ε_i)) with u_g ~ N(0, 0.3²),
ε_i ~ N(0, 0.15²).

Model (G = 10 groups, n = 50 counts):
    β_0, β_1 ~ N(0, 2²),  σ_u, σ_ε ~ HalfNormal(1),  u_g ~ N(0, σ_u²),  ε_i ~ N(0, σ_ε²),
    y_i ~ Poisson(exp(η_i)),  η_i = β_0 + β_1 x_i + u_{g(i)} + ε_i.
Coordinates (64-D, unconstrained): z = (β_0, β_1, ln σ_u, ln σ_ε, u_1..u_10, ε_1..ε_50), with
the log-Jacobians of σ_u, σ_ε = exp(·). Up to a constant,

    U = (β_0² + β_1²)/8 + Σ_{k∈{u,ε}} (σ_k²/2 − ln σ_k)
        + Σ_g u_g²/(2σ_u²) + G ln σ_u + Σ_i ε_i²/(2σ_ε²) + n ln σ_ε
        + Σ_i [exp(η_i) − y_i η_i].

Each ε_i is informed by one small count: as σ_ε → 0 the ε_i are pinned to 0, a 50-D funnel.
"""

import numpy as np
import torch

N_GROUPS, PER_GROUP = 10, 5
N = N_GROUPS * PER_GROUP
NAMES = (
    ["beta_0", "beta_1", "log_sigma_u", "log_sigma_eps"]
    + [f"u_{g}" for g in range(1, N_GROUPS + 1)]
    + [f"eps_{i}" for i in range(1, N + 1)]
)


def _data(seed: int = 20240613) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    x = rng.normal(0, 1, N)
    u, eps = rng.normal(0, 0.3, N_GROUPS), rng.normal(0, 0.15, N)
    y = rng.poisson(np.exp(1.0 + 0.5 * x + u[group] + eps)).astype(float)
    return group, x, y


GROUP, X, Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x, y = torch.as_tensor(X, dtype=z.dtype), torch.as_tensor(Y, dtype=z.dtype)
    group = torch.as_tensor(GROUP)
    b0, b1, log_sigma_u, log_sigma_eps = z[:, :4].unbind(-1)
    u, eps = z[:, 4 : 4 + N_GROUPS], z[:, 4 + N_GROUPS :]
    sigma_u, sigma_eps = torch.exp(log_sigma_u), torch.exp(log_sigma_eps)
    prior = (b0**2 + b1**2) / 8
    prior += sigma_u**2 / 2 - log_sigma_u + sigma_eps**2 / 2 - log_sigma_eps
    prior += (u**2).sum(-1) / (2 * sigma_u**2) + N_GROUPS * log_sigma_u
    prior += (eps**2).sum(-1) / (2 * sigma_eps**2) + N * log_sigma_eps
    eta = b0[:, None] + b1[:, None] * x + u[:, group] + eps
    likelihood = (torch.exp(eta) - y * eta).sum(-1)
    return prior + likelihood
