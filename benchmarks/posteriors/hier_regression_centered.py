"""Hierarchical linear regression with varying intercepts and slopes, 20 groups of 2–5 points,
centred parametrisation; 45-D.

Data (synthetic, generated here with numpy's default_rng(20240610)): group sizes n_j drawn
uniformly from {2, 3, 4, 5} (j = 1..20; 78 points in all); x_ij ~ N(0, 1); y_ij ~
N(a_j + b_j x_ij, 1) with a_j ~ N(1, 0.3²), b_j ~ N(0.5, 0.2²): the true τ's are small against
the noise, so the group effects are barely identified and the posterior of (τ, a, b) is a funnel.

Model:
    μ_a, μ_b ~ N(0, 5²),  τ_a, τ_b ~ HalfNormal(1),  σ ~ HalfNormal(2),
    a_j ~ N(μ_a, τ_a²),  b_j ~ N(μ_b, τ_b²),  y_ij ~ N(a_j + b_j x_ij, σ²).
Coordinates (45-D, unconstrained): z = (μ_a, μ_b, ln τ_a, ln τ_b, ln σ, a_1..a_20, b_1..b_20),
with the log-Jacobians of τ_a, τ_b, σ = exp(·). With J = 20 groups and n = 78 points, up to a
constant,

    U = (μ_a² + μ_b²)/50 + Σ_{k∈{a,b}} (τ_k²/2 − ln τ_k) + (σ²/8 − ln σ)
        + Σ_j (a_j − μ_a)²/(2τ_a²) + J ln τ_a + Σ_j (b_j − μ_b)²/(2τ_b²) + J ln τ_b
        + Σ_ij (y_ij − a_j − b_j x_ij)²/(2σ²) + n ln σ.

The same distribution in non-centred coordinates (a_j = μ_a + τ_a η_j, b_j = μ_b + τ_b ζ_j)
is easy for HMC; in these it is the classic hard case (divergences as τ → 0).
"""

import numpy as np
import torch

N_GROUPS = 20
NAMES = (
    ["mu_a", "mu_b", "log_tau_a", "log_tau_b", "log_sigma"]
    + [f"a_{j}" for j in range(1, N_GROUPS + 1)]
    + [f"b_{j}" for j in range(1, N_GROUPS + 1)]
)


def _data(seed: int = 20240610) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, N_GROUPS)
    group = np.repeat(np.arange(N_GROUPS), sizes)
    x = rng.normal(0, 1, group.size)
    a, b = rng.normal(1.0, 0.3, N_GROUPS), rng.normal(0.5, 0.2, N_GROUPS)
    y = a[group] + b[group] * x + rng.normal(0, 1.0, group.size)
    return group, x, y


GROUP, X, Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x, y = torch.as_tensor(X, dtype=z.dtype), torch.as_tensor(Y, dtype=z.dtype)
    group = torch.as_tensor(GROUP)
    mu_a, mu_b, log_tau_a, log_tau_b, log_sigma = z[:, :5].unbind(-1)
    a, b = z[:, 5 : 5 + N_GROUPS], z[:, 5 + N_GROUPS :]
    tau_a, tau_b, sigma = torch.exp(log_tau_a), torch.exp(log_tau_b), torch.exp(log_sigma)
    prior = (mu_a**2 + mu_b**2) / 50
    prior += tau_a**2 / 2 - log_tau_a + tau_b**2 / 2 - log_tau_b + sigma**2 / 8 - log_sigma
    prior += ((a - mu_a[:, None]) ** 2).sum(-1) / (2 * tau_a**2) + N_GROUPS * log_tau_a
    prior += ((b - mu_b[:, None]) ** 2).sum(-1) / (2 * tau_b**2) + N_GROUPS * log_tau_b
    resid = y - a[:, group] - b[:, group] * x
    likelihood = (resid**2).sum(-1) / (2 * sigma**2) + len(Y) * log_sigma
    return prior + likelihood
