"""Poisson regression with a log link and an exposure offset: hospital admissions in districts.

Data (synthetic, generated here with numpy's default_rng(20240603)): n = 150 districts with
    population ~ 1000·LogNormal(ln 5, 0.8²)  (exposure E_i = population / 1000);
    elderly    ~ N(18, 4²), percent of the population aged 65 or more;
    pm25       ~ Gamma(9, 12/9) µg/m³ (mean 12, sd 4);
    urban      ~ Bernoulli(0.4);
    deprivation ~ N(0, 1), a standardised score;
    admissions ~ Poisson(E_i · exp(η_i)),
        η = 1 + 0.03·elderly + 0.02·pm25 + 0.2·urban + 0.15·deprivation.

Model: β_j ~ N(0, 5²) for j = 0..4, admissions_i ~ Poisson(E_i exp(x_iᵀβ)),
x_i = (1, elderly, pm25, urban, deprivation). Coordinates: z = β (5-D). Up to a constant,

    U = Σ_j β_j²/50 + Σ_i [exp(x_iᵀβ + ln E_i) − admissions_i·(x_iᵀβ + ln E_i)].
"""

import numpy as np
import torch

NAMES = ["intercept", "elderly", "pm25", "urban", "deprivation"]
TRUE_BETA = [1.0, 0.03, 0.02, 0.2, 0.15]
PRIOR_SD = 5.0


def _data(n: int = 150, seed: int = 20240603) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    exposure = np.round(1000 * rng.lognormal(np.log(5), 0.8, n)) / 1000
    elderly = rng.normal(18, 4, n)
    pm25 = rng.gamma(9, 12 / 9, n)
    urban = rng.binomial(1, 0.4, n).astype(float)
    deprivation = rng.normal(0, 1, n)
    x = np.column_stack([np.ones(n), elderly, pm25, urban, deprivation])
    admissions = rng.poisson(exposure * np.exp(x @ np.array(TRUE_BETA))).astype(float)
    return x, np.log(exposure), admissions


X, LOG_EXPOSURE, Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(X, dtype=z.dtype)
    offset = torch.as_tensor(LOG_EXPOSURE, dtype=z.dtype)
    y = torch.as_tensor(Y, dtype=z.dtype)
    log_rate = z @ x.T + offset  # (N, n)
    likelihood = (torch.exp(log_rate) - y * log_rate).sum(-1)
    return (z**2).sum(-1) / (2 * PRIOR_SD**2) + likelihood
