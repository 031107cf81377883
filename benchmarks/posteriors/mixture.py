"""A two-component Gaussian mixture on 200 points, made identifiable by ordering the means.

Data (synthetic, generated here with numpy's default_rng(20240605)): 200 points, each from
N(−1, 0.6²) with probability 0.35 and from N(1.5, 1²) otherwise.

Model:
    x_i ~ w·N(μ_1, σ_1²) + (1 − w)·N(μ_2, σ_2²),  μ_2 = μ_1 + d, d > 0 (the ordering);
    priors: μ_1 ~ N(0, 5²),  d ~ HalfNormal(5),  σ_1, σ_2 ~ HalfNormal(2),  w ~ Uniform(0, 1).
Coordinates (5-D, unconstrained): z = (μ_1, ln d, ln σ_1, ln σ_2, logit w), with the
log-Jacobians of d, σ_1, σ_2 = exp(·) and of w = logistic(ℓ) (w(1 − w)). Up to a constant,

    U = μ_1²/50 + (d²/50 − ln d) + Σ_k (σ_k²/8 − ln σ_k) + softplus(ℓ) + softplus(−ℓ)
        − Σ_i ln[ w/σ_1 · exp(−(x_i − μ_1)²/(2σ_1²)) + (1 − w)/σ_2 · exp(−(x_i − μ_2)²/(2σ_2²)) ].
"""

import numpy as np
import torch

NAMES = ["mu_1", "log_d", "log_sigma_1", "log_sigma_2", "logit_w"]


def _data(n: int = 200, seed: int = 20240605) -> np.ndarray:
    rng = np.random.default_rng(seed)
    first = rng.random(n) < 0.35
    return np.where(first, rng.normal(-1.0, 0.6, n), rng.normal(1.5, 1.0, n))


X = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(X, dtype=z.dtype)
    mu1, log_d, log_s1, log_s2, logit_w = z.unbind(-1)
    d, s1, s2 = torch.exp(log_d), torch.exp(log_s1), torch.exp(log_s2)
    mu2 = mu1 + d
    softplus = torch.nn.functional.softplus
    prior = (
        mu1**2 / 50
        + d**2 / 50
        - log_d
        + s1**2 / 8
        - log_s1
        + s2**2 / 8
        - log_s2
        + softplus(logit_w)
        + softplus(-logit_w)
    )
    log_w, log_1mw = -softplus(-logit_w), -softplus(logit_w)  # ln w, ln(1 − w)
    first = log_w[:, None] - log_s1[:, None] - (x - mu1[:, None]) ** 2 / (2 * s1[:, None] ** 2)
    second = log_1mw[:, None] - log_s2[:, None] - (x - mu2[:, None]) ** 2 / (2 * s2[:, None] ** 2)
    likelihood = -torch.logsumexp(torch.stack([first, second]), dim=0).sum(-1)
    return prior + likelihood
