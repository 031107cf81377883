"""JAX re-implementations of the posteriors' energies, for NumPyro's NUTS (reference draws only).

Not an nfcli energy file (hence the leading underscore: benchmarks/posteriors.py and the tests
skip it). Each builder takes the namespace of the posterior's own file (its data: X, Y, …, read
with runpy) and returns the potential −ln p(z) of ONE point z (D,), written independently of the
torch U: from jax.scipy.stats log-densities with all their constants, so that it equals the torch
U only up to a constant. benchmarks/posterior_reference.py checks that it does, in float64.

Imports jax: needs the ``bench`` extra (pip install -e ".[bench]"); nfcli never imports this.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jax.scipy.stats import beta, cauchy, expon, gamma, multivariate_normal, norm, poisson

Potential = Callable[[jax.Array], jax.Array]
LOG2 = math.log(2.0)


def _bernoulli_logit(y: jax.Array, logit: jax.Array) -> jax.Array:
    """ln Bernoulli(y | p = logistic(logit)), stably."""
    return y * jax.nn.log_sigmoid(logit) + (1 - y) * jax.nn.log_sigmoid(-logit)


def _log_jacobian_logit(logit: jax.Array) -> jax.Array:
    """ln |dp/dℓ| for p = logistic(ℓ): ln p + ln(1 − p)."""
    return jax.nn.log_sigmoid(logit) + jax.nn.log_sigmoid(-logit)


def _log_half_normal_of_log(log_x: jax.Array, scale: float) -> jax.Array:
    """ln HalfNormal(x; scale) + ln x: the density of ln x."""
    return LOG2 + norm.logpdf(jnp.exp(log_x), 0.0, scale) + log_x


def _log_half_cauchy_of_log(log_x: jax.Array, scale: float) -> jax.Array:
    """ln HalfCauchy(x; scale) + ln x: the density of ln x."""
    return LOG2 + cauchy.logpdf(jnp.exp(log_x), 0.0, scale) + log_x


def _eight_schools_prior(mu: jax.Array, log_tau: jax.Array) -> jax.Array:
    """ln N(μ; 0, 5²) + ln HalfCauchy(τ; 5) + ln τ (the Jacobian of τ = e^{ln τ})."""
    tau = jnp.exp(log_tau)
    return norm.logpdf(mu, 0.0, 5.0) + LOG2 + cauchy.logpdf(tau, 0.0, 5.0) + log_tau


def eight_schools_centered(ns: dict[str, Any]) -> Potential:
    y, sigma = jnp.asarray(ns["Y"]), jnp.asarray(ns["SIGMA"])

    def potential(z: jax.Array) -> jax.Array:
        mu, log_tau, theta = z[0], z[1], z[2:]
        log_p = _eight_schools_prior(mu, log_tau)
        log_p += norm.logpdf(theta, mu, jnp.exp(log_tau)).sum()
        log_p += norm.logpdf(y, theta, sigma).sum()
        return -log_p

    return potential


def eight_schools_noncentered(ns: dict[str, Any]) -> Potential:
    y, sigma = jnp.asarray(ns["Y"]), jnp.asarray(ns["SIGMA"])

    def potential(z: jax.Array) -> jax.Array:
        mu, log_tau, eta = z[0], z[1], z[2:]
        theta = mu + jnp.exp(log_tau) * eta
        log_p = _eight_schools_prior(mu, log_tau) + norm.logpdf(eta).sum()
        log_p += norm.logpdf(y, theta, sigma).sum()
        return -log_p

    return potential


def _logistic_regression(x: jax.Array, y: jax.Array, prior_sd: float) -> Potential:
    def potential(beta: jax.Array) -> jax.Array:
        log_p = norm.logpdf(beta, 0.0, prior_sd).sum() + _bernoulli_logit(y, x @ beta).sum()
        return -log_p

    return potential


def logistic_scaled(ns: dict[str, Any]) -> Potential:
    return _logistic_regression(jnp.asarray(ns["X"]), jnp.asarray(ns["Y"]), ns["PRIOR_SD"])


def logistic100(ns: dict[str, Any]) -> Potential:
    return _logistic_regression(jnp.asarray(ns["X"]), jnp.asarray(ns["Y"]), 1.0)


def linear_scaled(ns: dict[str, Any]) -> Potential:
    """σ² ~ InvGamma(a0, b0) written out; β | σ² ~ MVN(0, σ² V0); z = (β, s = ln σ)."""
    x, y = jnp.asarray(ns["X"]), jnp.asarray(ns["Y"])
    a0, b0, scale = ns["A0"], ns["B0"], ns["PRIOR_SCALE"]
    p = x.shape[1]

    def potential(z: jax.Array) -> jax.Array:
        beta, s = z[:-1], z[-1]
        var = jnp.exp(2 * s)
        log_inv_gamma = a0 * jnp.log(b0) - jax.scipy.special.gammaln(a0)
        log_inv_gamma += -(a0 + 1) * jnp.log(var) - b0 / var
        log_jacobian = LOG2 + 2 * s  # dσ²/ds = 2e^{2s}
        log_beta = multivariate_normal.logpdf(beta, jnp.zeros(p), var * scale**2 * jnp.eye(p))
        log_lik = norm.logpdf(y, x @ beta, jnp.sqrt(var)).sum()
        return -(log_inv_gamma + log_jacobian + log_beta + log_lik)

    return potential


def poisson_glm(ns: dict[str, Any]) -> Potential:
    x, offset, y = jnp.asarray(ns["X"]), jnp.asarray(ns["LOG_EXPOSURE"]), jnp.asarray(ns["Y"])
    prior_sd = ns["PRIOR_SD"]

    def potential(beta: jax.Array) -> jax.Array:
        rate = jnp.exp(x @ beta + offset)
        log_p = norm.logpdf(beta, 0.0, prior_sd).sum() + poisson.logpmf(y, rate).sum()
        return -log_p

    return potential


def garch(ns: dict[str, Any]) -> Potential:
    """The same recursion as the torch file's loop, as a lax.scan."""
    r, v0 = jnp.asarray(ns["RETURNS"]), ns["V0"]

    def potential(z: jax.Array) -> jax.Array:
        mu, log_omega, logit_p, logit_a = z
        omega = jnp.exp(log_omega)
        persistence, share = jax.nn.sigmoid(logit_p), jax.nn.sigmoid(logit_a)
        alpha, beta = persistence * share, persistence * (1 - share)
        eps = r - mu

        def step(sigma2: jax.Array, eps_prev: jax.Array) -> tuple[jax.Array, jax.Array]:
            new = omega + alpha * eps_prev**2 + beta * sigma2
            return new, new

        _, later = jax.lax.scan(step, jnp.asarray(v0, dtype=z.dtype), eps[:-1])
        sigma2 = jnp.concatenate([jnp.asarray([v0], dtype=z.dtype), later])
        log_lik = norm.logpdf(eps, 0.0, jnp.sqrt(sigma2)).sum()
        log_prior = norm.logpdf(mu) + expon.logpdf(omega) + log_omega
        log_prior += _log_jacobian_logit(logit_p) + _log_jacobian_logit(logit_a)  # Uniform(0, 1)
        return -(log_prior + log_lik)

    return potential


def mixture(ns: dict[str, Any]) -> Potential:
    x = jnp.asarray(ns["X"])

    def half_normal(v: jax.Array, scale: float) -> jax.Array:
        return LOG2 + norm.logpdf(v, 0.0, scale)

    def potential(z: jax.Array) -> jax.Array:
        mu1, log_d, log_s1, log_s2, logit_w = z
        d, s1, s2, w = jnp.exp(log_d), jnp.exp(log_s1), jnp.exp(log_s2), jax.nn.sigmoid(logit_w)
        log_prior = norm.logpdf(mu1, 0.0, 5.0) + half_normal(d, 5.0) + log_d
        log_prior += half_normal(s1, 2.0) + log_s1 + half_normal(s2, 2.0) + log_s2
        log_prior += _log_jacobian_logit(logit_w)
        parts = jnp.stack(
            [jnp.log(w) + norm.logpdf(x, mu1, s1), jnp.log1p(-w) + norm.logpdf(x, mu1 + d, s2)]
        )
        return -(log_prior + logsumexp(parts, axis=0).sum())

    return potential


def gp_poisson(ns: dict[str, Any]) -> Potential:
    kernel, y, offset = jnp.asarray(ns["KERNEL"]), jnp.asarray(ns["Y"]), ns["OFFSET"]
    zero = jnp.zeros(kernel.shape[0])

    def potential(f: jax.Array) -> jax.Array:
        log_p = multivariate_normal.logpdf(f, zero, kernel)
        log_p += poisson.logpmf(y, jnp.exp(offset + f)).sum()
        return -log_p

    return potential


def hier_logistic(ns: dict[str, Any]) -> Potential:
    group, y = jnp.asarray(ns["GROUP"]), jnp.asarray(ns["OUTCOME"])
    severity, treated = jnp.asarray(ns["SEVERITY"]), jnp.asarray(ns["TREATED"])

    def potential(z: jax.Array) -> jax.Array:
        mu, log_tau, b1, b2, eta = z[0], z[1], z[2], z[3], z[4:]
        tau = jnp.exp(log_tau)
        alpha = mu + tau * eta
        logit = alpha[group] + b1 * severity + b2 * treated
        log_prior = norm.logpdf(mu, 0.0, 2.0) + LOG2 + norm.logpdf(tau) + log_tau
        log_prior += norm.logpdf(b1) + norm.logpdf(b2) + norm.logpdf(eta).sum()
        return -(log_prior + _bernoulli_logit(y, logit).sum())

    return potential


# Centred hierarchies: each has a centred potential (the torch file's coordinates) and a
# non-centred one (the same distribution, group effects = location + scale·standard normal) on
# which NUTS runs; posterior_reference.py maps its draws back (its Spec's transform).


def _hier_regression(ns: dict[str, Any], centered: bool) -> Potential:
    """z = (μ_a, μ_b, ln τ_a, ln τ_b, ln σ, a or η (J), b or ζ (J));
    non-centred: a = μ_a + τ_a η, b = μ_b + τ_b ζ."""
    group, x, y = jnp.asarray(ns["GROUP"]), jnp.asarray(ns["X"]), jnp.asarray(ns["Y"])
    j = ns["N_GROUPS"]

    def potential(z: jax.Array) -> jax.Array:
        mu_a, mu_b, log_tau_a, log_tau_b, log_sigma = z[:5]
        tau_a, tau_b = jnp.exp(log_tau_a), jnp.exp(log_tau_b)
        log_p = norm.logpdf(mu_a, 0.0, 5.0) + norm.logpdf(mu_b, 0.0, 5.0)
        log_p += _log_half_normal_of_log(log_tau_a, 1.0) + _log_half_normal_of_log(log_tau_b, 1.0)
        log_p += _log_half_normal_of_log(log_sigma, 2.0)
        if centered:
            a, b = z[5 : 5 + j], z[5 + j :]
            log_p += norm.logpdf(a, mu_a, tau_a).sum() + norm.logpdf(b, mu_b, tau_b).sum()
        else:
            a, b = mu_a + tau_a * z[5 : 5 + j], mu_b + tau_b * z[5 + j :]
            log_p += norm.logpdf(z[5:]).sum()
        log_p += norm.logpdf(y, a[group] + b[group] * x, jnp.exp(log_sigma)).sum()
        return -log_p

    return potential


def _horseshoe(ns: dict[str, Any], centered: bool) -> Potential:
    """z = (β or η (p), ln λ (p), ln τ, ln c, ln σ); β = τ λ̃ η. c² ~ InvGamma(ν/2, ν s²/2) is
    written as 1/c² ~ Gamma(ν/2, rate ν s²/2), with |d(1/c²)/d ln c| = 2/c²."""
    x, y, tau0 = jnp.asarray(ns["X"]), jnp.asarray(ns["Y"]), ns["TAU0"]
    nu, s, p = ns["NU"], ns["SLAB_SCALE"], ns["P"]

    def potential(z: jax.Array) -> jax.Array:
        first, log_lam = z[:p], z[p : 2 * p]
        log_tau, log_c, log_sigma = z[2 * p :]
        lam, tau, c = jnp.exp(log_lam), jnp.exp(log_tau), jnp.exp(log_c)
        lam_tilde = c * lam / jnp.sqrt(c**2 + tau**2 * lam**2)
        log_p = _log_half_cauchy_of_log(log_lam, 1.0).sum() + _log_half_cauchy_of_log(log_tau, tau0)
        log_p += gamma.logpdf(jnp.exp(-2 * log_c), nu / 2, scale=2 / (nu * s**2))
        log_p += LOG2 - 2 * log_c
        log_p += _log_half_normal_of_log(log_sigma, 2.0)
        if centered:
            b = first
            log_p += norm.logpdf(b, 0.0, tau * lam_tilde).sum()
        else:
            b = tau * lam_tilde * first
            log_p += norm.logpdf(first).sum()
        log_p += norm.logpdf(y, x @ b, jnp.exp(log_sigma)).sum()
        return -log_p

    return potential


def _irt_2pl(ns: dict[str, Any], centered: bool) -> Potential:
    """z = (μ_a, ln σ_a, μ_b, ln σ_b, ln a or α (I), b or δ (I), θ (J)); ln a = μ_a + σ_a α,
    b = μ_b + σ_b δ."""
    y, items = jnp.asarray(ns["Y"]), ns["N_ITEMS"]

    def potential(z: jax.Array) -> jax.Array:
        mu_a, log_sigma_a, mu_b, log_sigma_b = z[:4]
        sigma_a, sigma_b = jnp.exp(log_sigma_a), jnp.exp(log_sigma_b)
        first, second, theta = z[4 : 4 + items], z[4 + items : 4 + 2 * items], z[4 + 2 * items :]
        log_p = norm.logpdf(mu_a) + _log_half_normal_of_log(log_sigma_a, 0.5)
        log_p += norm.logpdf(mu_b, 0.0, 2.0) + _log_half_normal_of_log(log_sigma_b, 2.0)
        log_p += norm.logpdf(theta).sum()
        if centered:
            log_a, b = first, second
            log_p += norm.logpdf(log_a, mu_a, sigma_a).sum() + norm.logpdf(b, mu_b, sigma_b).sum()
        else:
            log_a, b = mu_a + sigma_a * first, mu_b + sigma_b * second
            log_p += norm.logpdf(first).sum() + norm.logpdf(second).sum()
        logit = jnp.exp(log_a) * (theta[:, None] - b)  # (persons, items)
        return -(log_p + _bernoulli_logit(y, logit).sum())

    return potential


def _glmm_poisson(ns: dict[str, Any], centered: bool) -> Potential:
    """z = (β_0, β_1, ln σ_u, ln σ_ε, u or ν (G), ε or ξ (n)); u = σ_u ν, ε = σ_ε ξ."""
    group, x, y = jnp.asarray(ns["GROUP"]), jnp.asarray(ns["X"]), jnp.asarray(ns["Y"])
    g = ns["N_GROUPS"]

    def potential(z: jax.Array) -> jax.Array:
        b0, b1, log_sigma_u, log_sigma_eps = z[:4]
        sigma_u, sigma_eps = jnp.exp(log_sigma_u), jnp.exp(log_sigma_eps)
        log_p = norm.logpdf(b0, 0.0, 2.0) + norm.logpdf(b1, 0.0, 2.0)
        log_p += _log_half_normal_of_log(log_sigma_u, 1.0)
        log_p += _log_half_normal_of_log(log_sigma_eps, 1.0)
        if centered:
            u, eps = z[4 : 4 + g], z[4 + g :]
            log_p += norm.logpdf(u, 0.0, sigma_u).sum() + norm.logpdf(eps, 0.0, sigma_eps).sum()
        else:
            u, eps = sigma_u * z[4 : 4 + g], sigma_eps * z[4 + g :]
            log_p += norm.logpdf(z[4:]).sum()
        log_rate = b0 + b1 * x + u[group] + eps
        return -(log_p + poisson.logpmf(y, jnp.exp(log_rate)).sum())

    return potential


def _stochastic_volatility(ns: dict[str, Any], centered: bool) -> Potential:
    """z = (μ, ℓ = logit((φ + 1)/2), ln σ, h or η (T)); non-centred: h_1 = μ + σ η_1/√(1 − φ²),
    h_t = μ + φ (h_{t−1} − μ) + σ η_t (a lax.scan)."""
    y = jnp.asarray(ns["Y"])

    def potential(z: jax.Array) -> jax.Array:
        mu, logit_phi, log_sigma, rest = z[0], z[1], z[2], z[3:]
        pi = jax.nn.sigmoid(logit_phi)
        phi, sigma = 2 * pi - 1, jnp.exp(log_sigma)
        log_p = norm.logpdf(mu, 0.0, 10.0) + beta.logpdf(pi, 20.0, 1.5)
        log_p += _log_jacobian_logit(logit_phi) + _log_half_normal_of_log(log_sigma, 1.0)
        sd_1 = sigma / jnp.sqrt(1 - phi**2)
        if centered:
            h = rest
            log_p += norm.logpdf(h[0], mu, sd_1)
            log_p += norm.logpdf(h[1:], mu + phi * (h[:-1] - mu), sigma).sum()
        else:

            def step(d_prev: jax.Array, eta: jax.Array) -> tuple[jax.Array, jax.Array]:
                d = phi * d_prev + sigma * eta
                return d, d

            d_1 = sd_1 * rest[0]
            _, d_later = jax.lax.scan(step, d_1, rest[1:])
            h = mu + jnp.concatenate([d_1[None], d_later])
            log_p += norm.logpdf(rest).sum()
        return -(log_p + norm.logpdf(y, 0.0, jnp.exp(h / 2)).sum())

    return potential


def hier_regression_centered(ns: dict[str, Any]) -> Potential:
    return _hier_regression(ns, centered=True)


def hier_regression_noncentered(ns: dict[str, Any]) -> Potential:
    return _hier_regression(ns, centered=False)


def horseshoe(ns: dict[str, Any]) -> Potential:
    return _horseshoe(ns, centered=True)


def horseshoe_noncentered(ns: dict[str, Any]) -> Potential:
    return _horseshoe(ns, centered=False)


def irt_2pl(ns: dict[str, Any]) -> Potential:
    return _irt_2pl(ns, centered=True)


def irt_2pl_noncentered(ns: dict[str, Any]) -> Potential:
    return _irt_2pl(ns, centered=False)


def glmm_poisson(ns: dict[str, Any]) -> Potential:
    return _glmm_poisson(ns, centered=True)


def glmm_poisson_noncentered(ns: dict[str, Any]) -> Potential:
    return _glmm_poisson(ns, centered=False)


def stochastic_volatility(ns: dict[str, Any]) -> Potential:
    return _stochastic_volatility(ns, centered=True)


def stochastic_volatility_noncentered(ns: dict[str, Any]) -> Potential:
    return _stochastic_volatility(ns, centered=False)


POTENTIALS: dict[str, Callable[[dict[str, Any]], Potential]] = {
    "eight_schools_centered": eight_schools_centered,
    "eight_schools_noncentered": eight_schools_noncentered,
    "logistic_scaled": logistic_scaled,
    "linear_scaled": linear_scaled,
    "poisson_glm": poisson_glm,
    "garch": garch,
    "mixture": mixture,
    "gp_poisson": gp_poisson,
    "hier_logistic": hier_logistic,
    "logistic100": logistic100,
    "hier_regression_centered": hier_regression_centered,
    "horseshoe": horseshoe,
    "irt_2pl": irt_2pl,
    "glmm_poisson": glmm_poisson,
    "stochastic_volatility": stochastic_volatility,
    # no torch file: the non-centred forms NUTS samples for the five above
    "hier_regression_noncentered": hier_regression_noncentered,
    "horseshoe_noncentered": horseshoe_noncentered,
    "irt_2pl_noncentered": irt_2pl_noncentered,
    "glmm_poisson_noncentered": glmm_poisson_noncentered,
    "stochastic_volatility_noncentered": stochastic_volatility_noncentered,
}
