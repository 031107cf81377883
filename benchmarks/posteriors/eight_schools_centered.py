"""The eight schools (Rubin 1981; Gelman et al., BDA3 section 5.5), centred parametrisation.

Data (real, BDA3 Table 5.2): estimated coaching effects y_j on SAT-V scores in eight schools and
their standard errors σ_j, j = 1..8:

    y = [28, 8, −3, 7, −1, 1, 18, 12],  σ = [15, 10, 16, 11, 9, 11, 10, 18].

Model:
    μ ~ N(0, 5²),  τ ~ HalfCauchy(5),  θ_j | μ, τ ~ N(μ, τ²),  y_j | θ_j ~ N(θ_j, σ_j²).

Coordinates (10-D, unconstrained): z = (μ, ln τ, θ_1..θ_8). p is the density of these
coordinates, so U includes the log-Jacobian of τ = exp(ln τ): p(ln τ) = p(τ)·τ. Up to a constant,

    U = μ²/50 + ln(1 + τ²/25) − ln τ + 8 ln τ + Σ_j (θ_j − μ)²/(2τ²) + Σ_j (y_j − θ_j)²/(2σ_j²).

The posterior has a funnel: as τ → 0 the θ_j are pinned to μ (the classic hard case for HMC and
for flows). It is the same distribution as eight_schools_noncentered.py under θ = μ + τ·η.
"""

import torch

Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
NAMES = ["mu", "log_tau"] + [f"theta_{j}" for j in range(1, 9)]


def energy(z: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(Y, dtype=z.dtype)
    sigma = torch.as_tensor(SIGMA, dtype=z.dtype)
    mu, log_tau, theta = z[:, 0], z[:, 1], z[:, 2:]
    tau = torch.exp(log_tau)
    prior_mu = mu**2 / 50
    prior_tau = torch.log1p(tau**2 / 25) - log_tau  # HalfCauchy(5) and the Jacobian of ln τ
    prior_theta = ((theta - mu[:, None]) ** 2).sum(-1) / (2 * tau**2) + 8 * log_tau
    likelihood = ((y - theta) ** 2 / (2 * sigma**2)).sum(-1)
    return prior_mu + prior_tau + prior_theta + likelihood
