"""Linear regression with unknown noise on unstandardised predictors, with the conjugate
Normal–Inverse-Gamma prior: its posterior is known exactly (a multivariate t for β, an inverse
gamma for σ²), and its scales differ by ~10⁴ with the intercept nearly collinear with year built.

Data (synthetic, generated here with numpy's default_rng(20240602)): n = 100 house sales with
    sqft     ~ N(1 500, 500²), clipped to ≥ 400;
    lot      ~ N(8 000, 3 000²) square feet, clipped to ≥ 1 000;
    year     ~ 1975 + N(0, 20²), rounded (year built);
    bedrooms ~ 1 + Poisson(2);
    distance ~ Gamma(4, 2.5) km to the centre;
    garage   ~ Bernoulli(0.6);
    price    = 50 + 0.1·sqft + 0.002·lot + 0.5·(year − 1975) + 10·bedrooms − 3·distance
               + 15·garage + N(0, 20²)   (thousands of dollars).

Model (p = 7 coefficients, β_0 the intercept, x_i = (1, sqft, lot, year, bedrooms, distance,
garage)):
    σ² ~ InvGamma(a0 = 2, b0 = 200),  β | σ² ~ N(0, σ² V0), V0 = 10²·I,
    price_i | β, σ² ~ N(x_iᵀβ, σ²).
Coordinates (8-D, unconstrained): z = (β_0..β_6, s = ln σ). p is the density of these
coordinates: the Jacobian of σ² = e^{2s} is 2e^{2s}. Up to a constant,

    U = (2·a0 + p + n)·s + e^{−2s}·(b0 + ‖β‖²/(2·10²) + ‖price − Xβ‖²/2).

Exact posterior: V_n = (V0⁻¹ + XᵀX)⁻¹, m_n = V_n Xᵀprice, a_n = a0 + n/2,
b_n = b0 + (priceᵀprice − m_nᵀ V_n⁻¹ m_n)/2; β ~ t_{2a_n}(m_n, (b_n/a_n) V_n), so
E β = m_n, Cov β = b_n/(a_n − 1)·V_n; σ² ~ InvGamma(a_n, b_n), so E s = (ln b_n − ψ(a_n))/2 and
Var s = ψ′(a_n)/4 (benchmarks/posterior_reference.py).
"""

import numpy as np
import torch

NAMES = ["intercept", "sqft", "lot", "year", "bedrooms", "distance", "garage", "log_sigma"]
A0, B0, PRIOR_SCALE = 2.0, 200.0, 10.0


def _data(n: int = 100, seed: int = 20240602) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sqft = np.maximum(rng.normal(1500, 500, n), 400)
    lot = np.maximum(rng.normal(8000, 3000, n), 1000)
    year = np.round(1975 + rng.normal(0, 20, n))
    bedrooms = 1 + rng.poisson(2, n).astype(float)
    distance = rng.gamma(4, 2.5, n)
    garage = rng.binomial(1, 0.6, n).astype(float)
    x = np.column_stack([np.ones(n), sqft, lot, year, bedrooms, distance, garage])
    mean = (
        50 + 0.1 * sqft + 0.002 * lot + 0.5 * (year - 1975) + 10 * bedrooms - 3 * distance
    ) + 15 * garage
    return x, mean + rng.normal(0, 20, n)


X, Y = _data()


def energy(z: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(X, dtype=z.dtype)
    y = torch.as_tensor(Y, dtype=z.dtype)
    beta, s = z[:, :-1], z[:, -1]
    n, p = x.shape
    rss = ((y - beta @ x.T) ** 2).sum(-1)
    scale = B0 + (beta**2).sum(-1) / (2 * PRIOR_SCALE**2) + rss / 2
    return (2 * A0 + p + n) * s + torch.exp(-2 * s) * scale
