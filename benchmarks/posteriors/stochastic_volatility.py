"""Stochastic volatility (Kim, Shephard & Chib 1998; the Stan User's Guide's model) on 100 returns,
centred latent log-volatilities; 103-D.

Data (synthetic, generated here with numpy's default_rng(20240614)): T = 100 returns simulated
from the model below with μ = −1, φ = 0.95, σ = 0.25, h_1 drawn from the stationary law.

Model:
    μ ~ N(0, 10²),  (φ + 1)/2 ~ Beta(20, 1.5),  σ ~ HalfNormal(1),
    h_1 ~ N(μ, σ²/(1 − φ²)),  h_t ~ N(μ + φ (h_{t−1} − μ), σ²) for t = 2..T,
    y_t ~ N(0, exp(h_t)).
Coordinates (103-D, unconstrained): z = (μ, ℓ = logit((φ + 1)/2), ln σ, h_1..h_100), with the
log-Jacobians of π = (φ + 1)/2 = logistic(ℓ) (π(1 − π)) and of σ = exp(ln σ). Then
1 − φ² = 4π(1 − π) and, up to a constant,

    U = μ²/200 − 20 ln π − 1.5 ln(1 − π) + (σ²/2 − ln σ)
        + (h_1 − μ)²(1 − φ²)/(2σ²) − ½ ln(1 − φ²) + T ln σ
        + Σ_{t≥2} (h_t − μ − φ (h_{t−1} − μ))²/(2σ²) + Σ_t ½ (h_t + y_t² e^{−h_t}).

Each return says little about its h_t, so the h_t follow σ: a funnel as σ → 0 (NUTS is usually
run on the non-centred h_t = μ + σ·(AR(1) recursion of standard normals) instead).
"""

import numpy as np
import torch

T = 100
NAMES = ["mu", "logit_phi", "log_sigma"] + [f"h_{t}" for t in range(1, T + 1)]


def _returns(seed: int = 20240614) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu, phi, sigma = -1.0, 0.95, 0.25
    h = np.empty(T)
    h[0] = mu + sigma / np.sqrt(1 - phi**2) * rng.standard_normal()
    for t in range(1, T):
        h[t] = mu + phi * (h[t - 1] - mu) + sigma * rng.standard_normal()
    return np.exp(h / 2) * rng.standard_normal(T)


Y = _returns()


def energy(z: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(Y, dtype=z.dtype)
    mu, logit_phi, log_sigma, h = z[:, 0], z[:, 1], z[:, 2], z[:, 3:]
    softplus = torch.nn.functional.softplus
    log_pi, log_1m_pi = -softplus(-logit_phi), -softplus(logit_phi)  # ln π, ln(1 − π)
    phi = torch.tanh(logit_phi / 2)  # 2π − 1
    log_1m_phi2 = np.log(4.0) + log_pi + log_1m_pi
    sigma = torch.exp(log_sigma)
    prior = mu**2 / 200 - 20 * log_pi - 1.5 * log_1m_pi + sigma**2 / 2 - log_sigma
    d = h - mu[:, None]
    prior += d[:, 0] ** 2 * torch.exp(log_1m_phi2) / (2 * sigma**2) - log_1m_phi2 / 2
    prior += ((d[:, 1:] - phi[:, None] * d[:, :-1]) ** 2).sum(-1) / (2 * sigma**2) + T * log_sigma
    likelihood = (h + y**2 * torch.exp(-h)).sum(-1) / 2
    return prior + likelihood
