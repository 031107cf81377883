"""GARCH(1,1) volatility model for 200 daily returns, its likelihood written as a user would:
a Python loop over the time steps (deliberately slow: 200 small torch operations per call).

Data (synthetic, generated here with numpy's default_rng(20240604)): returns r_t in percent,
t = 1..200, simulated from the model below with μ = 0.05, ω = 0.2, α = 0.15, β = 0.75, standard
normal innovations and σ_1² = ω/(1 − α − β), the stationary variance.

Model:
    r_t = μ + ε_t,  ε_t = σ_t e_t,  e_t ~ N(0, 1),
    σ_1² = v0 (the sample variance of r: a fixed "backcast"),
    σ_t² = ω + α ε_{t−1}² + β σ_{t−1}² for t ≥ 2;
    priors: μ ~ N(0, 1),  ω ~ Exponential(1),  P = α + β ~ Uniform(0, 1),
            A = α/(α + β) ~ Uniform(0, 1), so that α = P·A, β = P·(1 − A) and α + β < 1.
Coordinates (4-D, unconstrained): z = (μ, ln ω, logit P, logit A), with their log-Jacobians
(ω for ln ω; P(1 − P) and A(1 − A) for the logits). Up to a constant,

    U = μ²/2 + (ω − ln ω) + [softplus(ℓ_P) + softplus(−ℓ_P)] + [softplus(ℓ_A) + softplus(−ℓ_A)]
        + Σ_t ½ (ln σ_t² + ε_t²/σ_t²).
"""

import numpy as np
import torch

NAMES = ["mu", "log_omega", "logit_persistence", "logit_share"]
T = 200


def _returns(seed: int = 20240604) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu, omega, alpha, beta = 0.05, 0.2, 0.15, 0.75
    r = np.empty(T)
    sigma2 = omega / (1 - alpha - beta)
    eps = 0.0
    for t in range(T):
        if t > 0:
            sigma2 = omega + alpha * eps**2 + beta * sigma2
        eps = np.sqrt(sigma2) * rng.standard_normal()
        r[t] = mu + eps
    return r


RETURNS = _returns()
V0 = float(RETURNS.var())


def energy(z: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(RETURNS, dtype=z.dtype)
    mu, log_omega, logit_p, logit_a = z.unbind(-1)
    omega = torch.exp(log_omega)
    persistence, share = torch.sigmoid(logit_p), torch.sigmoid(logit_a)
    alpha, beta = persistence * share, persistence * (1 - share)
    softplus = torch.nn.functional.softplus
    prior = (
        mu**2 / 2
        + omega
        - log_omega
        + softplus(logit_p)
        + softplus(-logit_p)
        + softplus(logit_a)
        + softplus(-logit_a)
    )
    eps = r - mu[:, None]  # (N, T)
    sigma2 = torch.full_like(mu, V0)
    nll = torch.zeros_like(mu)
    for t in range(200):
        if t > 0:
            sigma2 = omega + alpha * eps[:, t - 1] ** 2 + beta * sigma2
        nll = nll + 0.5 * (torch.log(sigma2) + eps[:, t] ** 2 / sigma2)
    return prior + nll
