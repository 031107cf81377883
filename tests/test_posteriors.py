"""The benchmark posteriors (benchmarks/posteriors/): each is an energy file nfcli loads, of the
dimension and with the names its reference states, finite at the reference mean; and U equals
the negative log posterior computed here independently (numpy, all constants written out) up to
a constant, for the linear regression, the eight schools and GARCH. No jax or numpyro needed."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from nfcli.energy import load_energy

POSTERIORS = Path(__file__).resolve().parent.parent / "benchmarks" / "posteriors"
FILES = sorted(p for p in POSTERIORS.glob("*.py") if not p.name.startswith("_"))


def test_there_are_enough_posteriors_of_the_asked_sizes() -> None:
    dims = [load_energy(str(p)).dim for p in FILES]
    assert len(FILES) >= 9
    assert min(dims) >= 4 and max(dims) >= 100  # up to 103: the stochastic volatility model


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_loads_matches_its_reference_and_is_finite_at_its_mean(path: Path) -> None:
    energy = load_energy(str(path))
    ref = json.loads((POSTERIORS / "reference" / f"{path.stem}.json").read_text())
    assert energy.dim == ref["dim"] == len(ref["mean"]) == len(ref["sd"])
    assert list(energy.names) == ref["names"]
    assert all(s > 0 for s in ref["sd"])
    for dtype in (torch.float64, torch.float32):
        mean = torch.tensor([ref["mean"]], dtype=dtype)
        u = energy(mean)
        assert u.shape == (1,) and u.dtype == dtype and torch.isfinite(u).all()


def _u(path: str, z: np.ndarray) -> np.ndarray:
    return load_energy(str(POSTERIORS / path))(torch.as_tensor(z, dtype=torch.float64)).numpy()


def _norm_logpdf(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def _assert_equal_up_to_a_constant(u: np.ndarray, minus_log_p: np.ndarray) -> None:
    """u − (−ln p) is the same at every point (to 1e-9 of the energies' size)."""
    diff = u - minus_log_p
    assert np.ptp(diff) < 1e-9 * (1 + np.abs(u).max()), (u, minus_log_p)
    assert np.ptp(u) > 1.0  # the points differ, so this could have failed


def test_linear_scaled_is_the_normal_inverse_gamma_posterior() -> None:
    ns = runpy.run_path(str(POSTERIORS / "linear_scaled.py"))
    x, y, a0, b0, scale = ns["X"], ns["Y"], ns["A0"], ns["B0"], ns["PRIOR_SCALE"]
    beta_hat = np.linalg.lstsq(x, y, rcond=None)[0]
    z = np.array([[*beta_hat, math.log(20.0)], [*beta_hat * 1.001, math.log(25.0)]])
    minus_log_p = []
    for point in z:
        beta, s = point[:-1], point[-1]
        var = math.exp(2 * s)
        log_p = a0 * math.log(b0) - math.lgamma(a0) - (a0 + 1) * math.log(var) - b0 / var
        log_p += math.log(2 * var)  # |dσ²/ds|
        log_p += _norm_logpdf(beta, 0.0, math.sqrt(var) * scale).sum()
        log_p += _norm_logpdf(y, x @ beta, math.sqrt(var)).sum()
        minus_log_p.append(-log_p)
    _assert_equal_up_to_a_constant(_u("linear_scaled.py", z), np.array(minus_log_p))


def _eight_schools_prior(mu: float, log_tau: float) -> float:
    """ln N(μ; 0, 5²) + ln HalfCauchy(τ; 5) + ln τ."""
    tau = math.exp(log_tau)
    half_cauchy = math.log(2 / (math.pi * 5 * (1 + (tau / 5) ** 2)))
    return float(_norm_logpdf(np.array(mu), 0.0, np.array(5.0))) + half_cauchy + log_tau


def test_eight_schools_both_parametrisations_are_the_posterior() -> None:
    ns = runpy.run_path(str(POSTERIORS / "eight_schools_centered.py"))
    y, sigma = np.array(ns["Y"]), np.array(ns["SIGMA"])
    rng = np.random.default_rng(0)
    nc = np.column_stack([rng.normal(4, 3, 5), rng.normal(1, 1, 5), rng.normal(0, 1, (5, 8))])
    tau = np.exp(nc[:, 1:2])
    c = np.column_stack([nc[:, :2], nc[:, :1] + tau * nc[:, 2:]])
    log_p_nc, log_p_c = [], []
    for (mu, log_tau, *eta), theta in zip(nc, c[:, 2:], strict=True):
        prior = _eight_schools_prior(mu, log_tau)
        lik = _norm_logpdf(y, theta, sigma).sum()
        log_p_nc.append(prior + _norm_logpdf(np.array(eta), 0.0, 1.0).sum() + lik)
        log_p_c.append(prior + _norm_logpdf(theta, mu, np.exp(log_tau)).sum() + lik)
    _assert_equal_up_to_a_constant(_u("eight_schools_noncentered.py", nc), -np.array(log_p_nc))
    _assert_equal_up_to_a_constant(_u("eight_schools_centered.py", c), -np.array(log_p_c))
    # the same distribution: p_c(θ) = p_nc(η)/τ⁸ (dθ/dη = τ per school), with the same constant
    u_nc, u_c = _u("eight_schools_noncentered.py", nc), _u("eight_schools_centered.py", c)
    np.testing.assert_allclose(u_c - u_nc - 8 * nc[:, 1], 0.0, atol=1e-9)


def test_garch_loop_is_the_garch_likelihood() -> None:
    ns = runpy.run_path(str(POSTERIORS / "garch.py"))
    r, v0 = ns["RETURNS"], ns["V0"]
    z = np.array([[0.05, math.log(0.2), 2.0, -1.5], [0.0, math.log(0.5), 0.5, 0.3]])
    minus_log_p = []
    for mu, log_omega, logit_p, logit_a in z:
        omega, p, a = (
            math.exp(log_omega),
            1 / (1 + math.exp(-logit_p)),
            1 / (1 + math.exp(-logit_a)),
        )
        alpha, beta = p * a, p * (1 - a)
        sigma2, log_lik = v0, 0.0
        for t in range(len(r)):
            if t > 0:
                sigma2 = omega + alpha * (r[t - 1] - mu) ** 2 + beta * sigma2
            log_lik += float(_norm_logpdf(np.array(r[t]), mu, np.array(math.sqrt(sigma2))))
        log_prior = float(_norm_logpdf(np.array(mu), 0.0, np.array(1.0))) - omega + log_omega
        log_prior += math.log(p * (1 - p)) + math.log(a * (1 - a))
        minus_log_p.append(-(log_prior + log_lik))
    _assert_equal_up_to_a_constant(_u("garch.py", z), np.array(minus_log_p))
