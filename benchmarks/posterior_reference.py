"""Reference moments of the posteriors in benchmarks/posteriors/, obtained independently of nfcli.

    python benchmarks/posterior_reference.py                  # all of them (~5 min on one core)
    python benchmarks/posterior_reference.py garch mixture    # some
    python benchmarks/posterior_reference.py --no-check-exact # skip NUTS on the exact ones

Writes benchmarks/posteriors/reference/<name>.json: per coordinate the mean and sd (with the
names), the method and, for NUTS, the number of draws, the worst R-hat, the smallest bulk ESS and
each mean's Monte-Carlo standard error in posterior sds. Prints a Markdown table of them.

How (nothing here calls nfcli's fitting code; the torch energy files are only evaluated, to
check that the JAX potentials sampled here are the same densities):
  * exact: linear_scaled (conjugate Normal–Inverse-Gamma: β is multivariate t, σ² inverse gamma);
  * quadrature: the eight schools, by 1-D quadrature over ln τ with (μ, θ) | τ, y Gaussian in
    closed form (BDA3 section 5.4); both parametrisations from the same integral;
  * nuts: NumPyro NUTS (4 chains, run one after the other; dense mass matrix) on the JAX
    potential of benchmarks/posteriors/_jax.py, in float64, preconditioned by the Laplace
    approximation (z = mode + L·u, L Lᵀ the inverse Hessian at the mode: a linear map, so the
    same distribution). The draws per chain double (up to three times) until every coordinate
    has rank-normalised split R-hat < 1.01, bulk ESS ≥ 2500 and MCSE(mean) ≤ 0.02 sd.
Before anything, each JAX potential is compared with the torch U of the posterior's file at 300
points around the mode (1 to 3 Laplace sds out): they must agree up to a constant to 1e-6
relative, or the script stops. With --check-exact (the default) the exact and quadrature
references are also checked against NUTS (the centred eight schools by sampling the non-centred
form and mapping θ = μ + τ·η) and the agreement is stored with them.
The centred hierarchies (hier_regression_centered, horseshoe, irt_2pl, glmm_poisson,
stochastic_volatility) are sampled likewise on non-centred JAX potentials of their own (no torch
file; built from the centred file's data) and the draws mapped back by their Spec's transform;
before that, U_centred(transform(u)) − U_noncentred(u) − ln |det ∂transform/∂u| is checked to be
constant at the same 300 points (sampled_as_max_rel_diff in jax_torch_check).

Needs the bench extra (numpyro, jax; pip install -e ".[bench]"); nfcli never imports them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false "
    "intra_op_parallelism_threads=1",
)

import argparse
import importlib.util
import json
import runpy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import scipy.optimize
import scipy.special
import scipy.stats
import torch
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

from nfcli.energy import load_energy

jax.config.update("jax_enable_x64", True)
torch.set_num_threads(1)

HERE = Path(__file__).parent
POSTERIORS = HERE / "posteriors"
REFERENCE = POSTERIORS / "reference"
CHAINS, WARMUP, FIRST_DRAWS, DOUBLINGS = 4, 1500, 2500, 3
RHAT_MAX, ESS_MIN, MCSE_MAX = 1.01, 2500, 0.02
CHECK_POINTS, CHECK_RTOL = 300, 1e-6

_spec = importlib.util.spec_from_file_location("posteriors_jax", POSTERIORS / "_jax.py")
_jax = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_jax)


@dataclass
class Reference:
    """What <name>.json holds. MCSEs are of the means, in posterior sds; None: not sampled."""

    name: str
    dim: int
    names: list[str]
    mean: list[float]
    sd: list[float]
    method: str  # "exact", "quadrature" or "nuts"
    draws: int | None = None  # total, all chains
    chains: int | None = None
    worst_rhat: float | None = None  # rank-normalised split R-hat (Vehtari et al. 2021)
    min_ess_bulk: float | None = None
    mcse_mean_in_sd: list[float] | None = None
    max_mcse_mean_in_sd: float | None = None
    max_mcse_sd_in_sd: float | None = None  # of the sds, relative to the sd
    divergences: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    jax_torch_check: dict[str, float] = field(default_factory=dict)
    check: dict[str, Any] | None = None  # an exact reference against NUTS
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Spec:
    """How a posterior's reference is made. ``sample_as``: the potential in _jax.py NUTS runs on
    (the same distribution in other coordinates; with no file of its own in posteriors/, it is
    built from this posterior's data), mapped to this one's by ``transform(draws (..., D), the
    posterior file's namespace)``, written in jax.numpy so that its Jacobian can be checked."""

    method: str = "nuts"
    sample_as: str | None = None
    transform: Callable[[Any, dict[str, Any]], Any] | None = None
    target_accept: float = 0.9
    draws_per_chain: int = FIRST_DRAWS  # the first try's
    note: str = ""  # why the settings differ from the defaults; stored with the settings


def noncentered_to_centered(z: Any, ns: dict[str, Any]) -> jax.Array:
    """(μ, ln τ, η) → (μ, ln τ, θ = μ + τ·η)."""
    mu, log_tau, eta = z[..., :1], z[..., 1:2], z[..., 2:]
    return jnp.concatenate([mu, log_tau, mu + jnp.exp(log_tau) * eta], axis=-1)


def hier_regression_to_centered(z: Any, ns: dict[str, Any]) -> jax.Array:
    """(μ_a, μ_b, ln τ_a, ln τ_b, ln σ, η, ζ) → (…, a = μ_a + τ_a η, b = μ_b + τ_b ζ)."""
    j = ns["N_GROUPS"]
    a = z[..., :1] + jnp.exp(z[..., 2:3]) * z[..., 5 : 5 + j]
    b = z[..., 1:2] + jnp.exp(z[..., 3:4]) * z[..., 5 + j :]
    return jnp.concatenate([z[..., :5], a, b], axis=-1)


def horseshoe_to_centered(z: Any, ns: dict[str, Any]) -> jax.Array:
    """(η, ln λ, ln τ, ln c, ln σ) → (β = τ λ̃ η, …), λ̃ = cλ/√(c² + τ²λ²)."""
    p = ns["P"]
    lam, tau, c = jnp.exp(z[..., p : 2 * p]), jnp.exp(z[..., -3:-2]), jnp.exp(z[..., -2:-1])
    scale = tau * c * lam / jnp.sqrt(c**2 + tau**2 * lam**2)
    return jnp.concatenate([scale * z[..., :p], z[..., p:]], axis=-1)


def irt_2pl_to_centered(z: Any, ns: dict[str, Any]) -> jax.Array:
    """(μ_a, ln σ_a, μ_b, ln σ_b, α, δ, θ) → (…, ln a = μ_a + σ_a α, b = μ_b + σ_b δ, θ)."""
    i = ns["N_ITEMS"]
    log_a = z[..., :1] + jnp.exp(z[..., 1:2]) * z[..., 4 : 4 + i]
    b = z[..., 2:3] + jnp.exp(z[..., 3:4]) * z[..., 4 + i : 4 + 2 * i]
    return jnp.concatenate([z[..., :4], log_a, b, z[..., 4 + 2 * i :]], axis=-1)


def glmm_poisson_to_centered(z: Any, ns: dict[str, Any]) -> jax.Array:
    """(β_0, β_1, ln σ_u, ln σ_ε, ν, ξ) → (…, u = σ_u ν, ε = σ_ε ξ)."""
    g = ns["N_GROUPS"]
    u, eps = jnp.exp(z[..., 2:3]) * z[..., 4 : 4 + g], jnp.exp(z[..., 3:4]) * z[..., 4 + g :]
    return jnp.concatenate([z[..., :4], u, eps], axis=-1)


def stochastic_volatility_to_centered(z: Any, ns: dict[str, Any]) -> jax.Array:
    """(μ, ℓ, ln σ, η) → (μ, ℓ, ln σ, h): h_1 = μ + σ η_1/√(1 − φ²), h_t = μ + φ (h_{t−1} − μ)
    + σ η_t, with φ = 2·logistic(ℓ) − 1."""
    z = jnp.asarray(z)
    mu, phi, sigma = z[..., 0], 2 * jax.nn.sigmoid(z[..., 1]) - 1, jnp.exp(z[..., 2])
    eta = jnp.moveaxis(z[..., 3:], -1, 0)  # time first, for the scan

    def step(d_prev: jax.Array, eta_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = phi * d_prev + sigma * eta_t
        return d, d

    d_1 = sigma / jnp.sqrt(1 - phi**2) * eta[0]
    _, d_later = jax.lax.scan(step, d_1, eta[1:])
    h = mu[..., None] + jnp.moveaxis(jnp.concatenate([d_1[None], d_later]), 0, -1)
    return jnp.concatenate([z[..., :3], h], axis=-1)


SPECS: dict[str, Spec] = {
    "eight_schools_centered": Spec(
        "quadrature", "eight_schools_noncentered", noncentered_to_centered, 0.95
    ),
    "eight_schools_noncentered": Spec("quadrature", target_accept=0.95),
    "linear_scaled": Spec("exact"),
    "logistic_scaled": Spec(),
    "poisson_glm": Spec(),
    "garch": Spec(target_accept=0.95, draws_per_chain=10_000),  # ESS/draw ≈ 0.15: a ridge
    "mixture": Spec(target_accept=0.95),
    "gp_poisson": Spec(),
    "hier_logistic": Spec(target_accept=0.95),
    "logistic100": Spec(),
    "hier_regression_centered": Spec(
        sample_as="hier_regression_noncentered",
        transform=hier_regression_to_centered,
        draws_per_chain=10_000,
        note="10000 draws per chain: the sd of ln tau_a (heavy left tail) to ~3% MCSE",
    ),
    "horseshoe": Spec(
        sample_as="horseshoe_noncentered",
        transform=horseshoe_to_centered,
        target_accept=0.99,
        draws_per_chain=5000,
        note="target_accept 0.99: at 0.9 the non-centred form had 23 divergences in 20000 draws",
    ),
    "irt_2pl": Spec(
        sample_as="irt_2pl_noncentered",
        transform=irt_2pl_to_centered,
        target_accept=0.99,
        draws_per_chain=10_000,
        note="target_accept 0.99 and sigma_a ~ HalfNormal(0.5) in the model: with "
        "HalfNormal(1), 203 divergences in 20000 draws at 0.9 and 182 in 40000 at 0.99, where "
        "the discriminations are large (a ~ 8)",
    ),
    "glmm_poisson": Spec(
        sample_as="glmm_poisson_noncentered",
        transform=glmm_poisson_to_centered,
        target_accept=0.99,
        draws_per_chain=10_000,
        note="target_accept 0.99: at 0.9, a few divergences (1 in 10000 draws)",
    ),
    "stochastic_volatility": Spec(
        sample_as="stochastic_volatility_noncentered",
        transform=stochastic_volatility_to_centered,
        target_accept=0.995,
        draws_per_chain=20_000,
        note="target_accept 0.995: 46 divergences in 20000 draws at 0.9 and 7 at 0.99, where "
        "phi -> 1 and mu is barely identified; 20000 draws per chain as mu's tails are heavy "
        "(excess kurtosis ~12), for its sd to ~3% MCSE",
    ),
}


# ---------------------------------------------------------------- exact and quadrature moments


def eight_schools_moments(ns: dict[str, Any], centered: bool) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of (μ, ln τ, θ or η) by quadrature over t = ln τ.

    Given τ, y ~ N(0, D + 25·11ᵀ), D = diag(σ² + τ²) (μ ~ N(0, 5²) integrated out); μ | τ, y is
    N(m, V) with 1/V = 1/25 + Σ 1/(σ_j² + τ²), m = V Σ y_j/(σ_j² + τ²); θ_j | μ, τ, y is
    N(w_j μ + (1 − w_j) y_j, v_j), w_j = σ_j²/(σ_j² + τ²), v_j = τ²σ_j²/(σ_j² + τ²); η_j =
    (θ_j − μ)/τ. p(t | y) ∝ HalfCauchy(τ; 5)·τ·N(y; 0, D + 25·11ᵀ), on a fine grid (trapezoid)."""
    y, sigma2 = np.asarray(ns["Y"]), np.asarray(ns["SIGMA"]) ** 2
    t = np.linspace(-30.0, 10.0, 100_001)
    tau2 = np.exp(2 * t)[:, None]
    d = sigma2 + tau2  # (G, 8)
    c = 25.0
    s1, sy = (1 / d).sum(-1), (y / d).sum(-1)
    log_det = np.log(d).sum(-1) + np.log1p(c * s1)
    quad = (y**2 / d).sum(-1) - c * sy**2 / (1 + c * s1)
    log_lik = -0.5 * (log_det + quad)
    log_prior = -np.log1p(np.exp(2 * t) / 25) + t  # HalfCauchy(5) and the Jacobian
    log_w = log_lik + log_prior
    w = np.exp(log_w - log_w.max())
    w /= np.trapezoid(w, t)
    v_mu = 1 / (1 / c + s1)
    m_mu = v_mu * sy
    w_j = sigma2 / d
    if centered:
        m_x = w_j * m_mu[:, None] + (1 - w_j) * y
        v_x = w_j**2 * v_mu[:, None] + tau2 * sigma2 / d
    else:
        k = np.sqrt(tau2) / d  # (1 − w_j)/τ = τ/(σ_j² + τ²), stable as τ → 0
        m_x = k * (y - m_mu[:, None])
        v_x = k**2 * v_mu[:, None] + sigma2 / d
    cond_mean = np.column_stack([m_mu, t, m_x])
    cond_var = np.column_stack([v_mu, np.zeros_like(t), v_x])

    def integral(f: np.ndarray) -> np.ndarray:
        return np.trapezoid(w[:, None] * f, t, axis=0)

    mean = integral(cond_mean)
    var = integral(cond_var + cond_mean**2) - mean**2
    return mean, np.sqrt(var)


def linear_moments(ns: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate Normal–Inverse-Gamma: V_n = (V0⁻¹ + XᵀX)⁻¹, m_n = V_n Xᵀy, a_n = a0 + n/2,
    b_n = b0 + (yᵀy − m_nᵀ V_n⁻¹ m_n)/2. β ~ t_{2a_n}(m_n, (b_n/a_n) V_n): mean m_n, covariance
    b_n/(a_n − 1)·V_n. σ² ~ InvGamma(a_n, b_n), i.e. 1/σ² ~ Gamma(a_n, rate b_n), so
    E ln σ² = ln b_n − ψ(a_n), Var ln σ² = ψ′(a_n), and s = ln σ = ½ ln σ²."""
    x, y = np.asarray(ns["X"]), np.asarray(ns["Y"])
    a0, b0, scale = ns["A0"], ns["B0"], ns["PRIOR_SCALE"]
    n, p = x.shape
    precision = np.eye(p) / scale**2 + x.T @ x
    m = np.linalg.solve(precision, x.T @ y)
    a_n = a0 + n / 2
    b_n = b0 + (y @ y - m @ precision @ m) / 2
    cov = b_n / (a_n - 1) * np.linalg.inv(precision)
    mean_s = 0.5 * (np.log(b_n) - scipy.special.digamma(a_n))
    sd_s = 0.5 * np.sqrt(scipy.special.polygamma(1, a_n))
    return np.append(m, mean_s), np.append(np.sqrt(np.diag(cov)), sd_s)


# ------------------------------------------------------------------------------- NUTS and checks


def laplace(potential: Callable, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The mode of the potential (Newton trust region, float64) and L with L Lᵀ = H⁻¹ there."""
    value_and_grad = jax.jit(jax.value_and_grad(potential))
    hessian = jax.jit(jax.hessian(potential))

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = value_and_grad(jnp.asarray(z))
        return float(v), np.asarray(g)

    result = scipy.optimize.minimize(
        fun,
        np.zeros(dim),
        jac=True,
        hess=lambda z: np.asarray(hessian(jnp.asarray(z))),
        method="trust-exact",
        options={"gtol": 1e-9, "maxiter": 2000},
    )
    mode = result.x
    h = np.asarray(hessian(jnp.asarray(mode)))
    h = (h + h.T) / 2
    values, vectors = np.linalg.eigh(h)
    if values.min() <= 0:
        print(f"  note: Hessian at the mode not positive definite (min {values.min():.2e})")
        values = np.maximum(np.abs(values), 1e-8 * np.abs(values).max())
    return mode, vectors / np.sqrt(values)  # (V Λ^{-1/2})(V Λ^{-1/2})ᵀ = H⁻¹


def both_finite(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which points to compare: those where a point is non-finite in both (exp overflowing far
    out: zero density either way) are left out, at most 5% of them; stop if more."""
    keep = np.isfinite(a) | np.isfinite(b)
    if keep.mean() < 0.95:
        sys.exit(f"{name}: {np.sum(~keep)} of {len(keep)} check points are non-finite in both.")
    return keep


def check_jax_against_torch(name: str, potential: Callable, points: np.ndarray) -> dict:
    """The JAX potential and the torch U of the posterior's file agree up to a constant, in
    float64, at ``points`` (P, D) (but those where both are non-finite); stop with an error if
    not."""
    energy = load_energy(str(POSTERIORS / f"{name}.py"))
    u_torch = energy(torch.as_tensor(points, dtype=torch.float64)).numpy()
    u_jax = np.asarray(jax.vmap(potential)(jnp.asarray(points)))
    keep = both_finite(name, u_torch, u_jax)
    left_out = int(np.sum(~keep))
    points, u_torch, u_jax = points[keep], u_torch[keep], u_jax[keep]
    diff = u_torch - u_jax
    const = float(np.median(diff))
    rel = np.abs(diff - const) / (1 + np.abs(u_torch))
    worst = float(np.nanmax(rel)) if np.isfinite(rel).all() else float("inf")
    if not worst <= CHECK_RTOL:
        i = int(np.nanargmax(np.where(np.isfinite(rel), rel, np.inf)))
        sys.exit(
            f"{name}: the JAX potential and the torch U differ by more than a constant: relative "
            f"error {worst:.2e} > {CHECK_RTOL:g} at point {i} (torch {u_torch[i]!r}, JAX "
            f"{u_jax[i]!r}, usual difference {const!r})."
        )
    result = {"points": len(points), "max_rel_diff": worst, "constant": const}
    if left_out:
        result["points_left_out_nonfinite"] = left_out
    return result


def check_sampled_as(
    name: str, potential: Callable, sample_potential: Callable, transform: Callable, u: np.ndarray
) -> float:
    """The potential NUTS samples is this posterior's in other coordinates: at ``u`` (P, D),
    U(transform(u)) − U_sampled(u) − ln |det ∂transform/∂u| is a constant (1e-6 relative; but
    at points where both are non-finite), or the script stops. Returns the worst deviation."""

    def difference(point: jax.Array) -> jax.Array:
        log_det = jnp.linalg.slogdet(jax.jacfwd(transform)(point))[1]
        return potential(transform(point)) - sample_potential(point) - log_det

    diff = np.asarray(jax.vmap(difference)(jnp.asarray(u)))
    u_sampled = np.asarray(jax.vmap(sample_potential)(jnp.asarray(u)))
    keep = both_finite(name, diff, u_sampled)
    diff, scale = diff[keep], 1 + np.abs(u_sampled[keep])
    rel = np.abs(diff - np.median(diff)) / scale
    worst = float(rel.max()) if np.isfinite(rel).all() else float("inf")
    if not worst <= CHECK_RTOL:
        sys.exit(
            f"{name}: the potential NUTS samples is not this posterior in other coordinates: "
            f"relative error {worst:.2e} > {CHECK_RTOL:g} (check the transform's Jacobian)."
        )
    return worst


def split_rhat(x: np.ndarray) -> np.ndarray:
    """Split R-hat of draws (C, S, D)."""
    half = x.shape[1] // 2
    x = np.concatenate([x[:, :half], x[:, half : 2 * half]])
    n = x.shape[1]
    within = x.var(axis=1, ddof=1).mean(0)
    between = n * x.mean(axis=1).var(axis=0, ddof=1)
    return np.sqrt(((n - 1) / n * within + between / n) / within)


def rank_normalise(x: np.ndarray) -> np.ndarray:
    """Φ⁻¹((rank − 3/8)/(S + 1/4)) over all chains' draws, per coordinate (x: (C, S, D))."""
    c, s, d = x.shape
    ranks = scipy.stats.rankdata(x.reshape(c * s, d), axis=0)
    return scipy.special.ndtri((ranks - 0.375) / (c * s + 0.25)).reshape(c, s, d)


def split_ess(x: np.ndarray) -> np.ndarray:
    half = x.shape[1] // 2
    x = np.concatenate([x[:, :half], x[:, half : 2 * half]])
    return np.asarray(effective_sample_size(x))


@dataclass
class DrawSummary:
    mean: np.ndarray
    sd: np.ndarray
    rhat: np.ndarray  # rank-normalised split R-hat: max of bulk and folded
    ess_bulk: np.ndarray
    mcse_mean_in_sd: np.ndarray  # 1/√ESS of the raw draws
    mcse_sd_in_sd: np.ndarray  # delta method with the ESS of the squared deviations

    @property
    def converged(self) -> bool:
        return bool(
            self.rhat.max() < RHAT_MAX
            and self.ess_bulk.min() >= ESS_MIN
            and self.mcse_mean_in_sd.max() <= MCSE_MAX
        )


def summarise_draws(x: np.ndarray) -> DrawSummary:
    """Moments and convergence diagnostics of draws x (chains, draws, D)."""
    flat = x.reshape(-1, x.shape[-1])
    mean, sd = flat.mean(0), flat.std(0, ddof=1)
    folded = np.abs(x - np.median(flat, axis=0))
    rhat = np.maximum(split_rhat(rank_normalise(x)), split_rhat(rank_normalise(folded)))
    ess_mean = split_ess(x)
    sq = (x - mean) ** 2
    ess_sq = split_ess(sq)
    mcse_var = np.sqrt(sq.reshape(-1, x.shape[-1]).var(0) / ess_sq)
    return DrawSummary(
        mean=mean,
        sd=sd,
        rhat=rhat,
        ess_bulk=split_ess(rank_normalise(x)),
        mcse_mean_in_sd=1 / np.sqrt(ess_mean),
        mcse_sd_in_sd=mcse_var / (2 * sd**2),
    )


def nuts(
    potential: Callable, mode: np.ndarray, chol: np.ndarray, spec: Spec, seed: int
) -> tuple[np.ndarray, DrawSummary, dict[str, Any]]:
    """NUTS on u with z = mode + chol·u; the draws per chain double until converged (or the
    last try). Returns draws (C, S, D) of z, their summary and the run's settings."""
    mode_j, chol_j = jnp.asarray(mode), jnp.asarray(chol)

    def potential_u(u: jax.Array) -> jax.Array:
        return potential(mode_j + chol_j @ u)

    draws_per_chain, divergences = spec.draws_per_chain, 0
    for attempt in range(DOUBLINGS + 1):
        kernel = NUTS(
            potential_fn=potential_u, dense_mass=True, target_accept_prob=spec.target_accept
        )
        mcmc = MCMC(
            kernel,
            num_warmup=WARMUP,
            num_samples=draws_per_chain,
            num_chains=CHAINS,
            chain_method="sequential",
            progress_bar=False,
        )
        key = jax.random.PRNGKey(seed + attempt)
        init = jax.random.normal(jax.random.fold_in(key, 1), (CHAINS, len(mode)))
        mcmc.run(key, init_params=init, extra_fields=("diverging",))
        u = np.asarray(mcmc.get_samples(group_by_chain=True))
        divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
        z = mode + u @ chol.T
        summary = summarise_draws(z)
        if summary.converged:
            break
        if attempt < DOUBLINGS:
            print(
                f"  not yet: R-hat {summary.rhat.max():.4f}, bulk ESS {summary.ess_bulk.min():.0f}"
                f", MCSE {summary.mcse_mean_in_sd.max():.3f} sd with {draws_per_chain} draws per"
                " chain; doubling"
            )
            draws_per_chain *= 2
    settings = {
        "sampler": "numpyro NUTS, dense mass matrix, Laplace-preconditioned",
        "warmup": WARMUP,
        "draws_per_chain": draws_per_chain,
        "target_accept": spec.target_accept,
        "seed": seed + attempt,
        "divergences": divergences,
    }
    if spec.note:
        settings["note"] = spec.note
    return z, summary, settings


def reference_for(name: str, seed: int, check_exact: bool) -> Reference:
    start = time.perf_counter()
    spec = SPECS[name]
    ns = runpy.run_path(str(POSTERIORS / f"{name}.py"))
    names = list(ns["NAMES"])
    potential = _jax.POTENTIALS[name](ns)
    sample_as = spec.sample_as or name
    sample_file = POSTERIORS / f"{sample_as}.py"  # none: a potential built from this one's data
    sample_ns = ns
    if sample_as != name and sample_file.exists():
        sample_ns = runpy.run_path(str(sample_file))

    def transform(z: np.ndarray) -> np.ndarray:
        return np.asarray(spec.transform(z, ns)) if spec.transform else z

    sample_potential = _jax.POTENTIALS[sample_as](sample_ns)
    mode, chol = laplace(sample_potential, len(names))

    rng = np.random.default_rng(seed)
    scales = np.repeat([1.0, 2.0, 3.0], CHECK_POINTS // 3)[:, None]
    u_points = mode + (scales * rng.standard_normal((len(scales), len(names)))) @ chol.T
    agreement = check_jax_against_torch(name, potential, transform(u_points))
    if sample_as != name:
        agreement["sampled_as_max_rel_diff"] = check_sampled_as(
            name, potential, sample_potential, lambda u: spec.transform(u, ns), u_points
        )
    versions = {"numpyro": numpyro.__version__, "jax": jax.__version__, "numpy": np.__version__}

    if spec.method == "nuts" or check_exact:
        z, summary, settings_nuts = nuts(sample_potential, mode, chol, spec, seed)
        if sample_as != name:
            z = transform(z)
            summary = summarise_draws(z)
            settings_nuts["sampled_as"] = f"{sample_as}, mapped by {spec.transform.__name__}"
    if spec.method == "nuts":
        return Reference(
            name=name,
            dim=len(names),
            names=names,
            mean=summary.mean.tolist(),
            sd=summary.sd.tolist(),
            method="nuts",
            draws=int(z.shape[0] * z.shape[1]),
            chains=int(z.shape[0]),
            worst_rhat=float(summary.rhat.max()),
            min_ess_bulk=float(summary.ess_bulk.min()),
            mcse_mean_in_sd=summary.mcse_mean_in_sd.tolist(),
            max_mcse_mean_in_sd=float(summary.mcse_mean_in_sd.max()),
            max_mcse_sd_in_sd=float(summary.mcse_sd_in_sd.max()),
            divergences=settings_nuts.pop("divergences"),
            settings=settings_nuts,
            jax_torch_check=agreement,
            seconds=time.perf_counter() - start,
            versions=versions,
        )
    if spec.method == "exact":
        mean, sd = linear_moments(ns)
        settings = {"formula": "conjugate Normal-Inverse-Gamma (see linear_moments)"}
    else:
        mean, sd = eight_schools_moments(ns, centered=name == "eight_schools_centered")
        settings = {"formula": "trapezoid over ln tau in [-30, 10], 100001 points"}
    check = None
    if check_exact:
        check = {
            "method": "nuts",
            "draws": int(z.shape[0] * z.shape[1]),
            "worst_rhat": float(summary.rhat.max()),
            "min_ess_bulk": float(summary.ess_bulk.min()),
            "max_mcse_mean_in_sd": float(summary.mcse_mean_in_sd.max()),
            "divergences": settings_nuts["divergences"],
            "max_abs_mean_diff_in_ref_sd": float((np.abs(summary.mean - mean) / sd).max()),
            "max_abs_sd_ratio_minus_1": float(np.abs(summary.sd / sd - 1).max()),
            "max_mcse_sd_in_sd": float(summary.mcse_sd_in_sd.max()),
        }
        mean_z = np.abs(summary.mean - mean) / (sd * summary.mcse_mean_in_sd)
        sd_z = np.abs(summary.sd / sd - 1) / summary.mcse_sd_in_sd
        if max(mean_z.max(), sd_z.max()) > 4:
            print(
                f"  WARNING: {name}: NUTS disagrees with the {spec.method} moments by more than "
                f"4 MCSEs (means {mean_z.max():.1f}, sds {sd_z.max():.1f}): check the formulas"
            )
    return Reference(
        name=name,
        dim=len(names),
        names=names,
        mean=mean.tolist(),
        sd=sd.tolist(),
        method=spec.method,
        mcse_mean_in_sd=[0.0] * len(names),
        max_mcse_mean_in_sd=0.0,
        settings=settings,
        jax_torch_check=agreement,
        check=check,
        seconds=time.perf_counter() - start,
        versions=versions,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"posteriors (default: all): {', '.join(SPECS)}")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--check-exact",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run NUTS on the exact and quadrature posteriors and store the agreement",
    )
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in SPECS]
    if unknown:
        ap.error(f"unknown posteriors {unknown}; choose from {', '.join(SPECS)}")
    REFERENCE.mkdir(exist_ok=True)
    print(
        "| posterior | D | method | draws | worst R-hat | min bulk ESS | max MCSE (sd) "
        "| max MCSE of sd (sd) | divergences "
        "| NUTS check: max abs(Δmean) (sd), max abs(sd ratio − 1) | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.names or SPECS:
        ref = reference_for(name, args.seed, args.check_exact)
        path = REFERENCE / f"{name}.json"
        path.write_text(json.dumps(asdict(ref), indent=1) + "\n")
        check = (
            f"{ref.check['max_abs_mean_diff_in_ref_sd']:.3f}, "
            f"{ref.check['max_abs_sd_ratio_minus_1']:.3f} ({ref.check['draws']} draws, R-hat "
            f"{ref.check['worst_rhat']:.4f}, ESS {ref.check['min_ess_bulk']:.0f})"
            if ref.check
            else ""
        )

        def fmt(v: float | None, f: str) -> str:
            return "" if v is None else format(v, f)

        print(
            f"| {name} | {ref.dim} | {ref.method} | {fmt(ref.draws, 'd')} "
            f"| {fmt(ref.worst_rhat, '.4f')} | {fmt(ref.min_ess_bulk, '.0f')} "
            f"| {fmt(ref.max_mcse_mean_in_sd, '.3f')} | {fmt(ref.max_mcse_sd_in_sd, '.3f')} "
            f"| {fmt(ref.divergences, 'd')} | {check} "
            f"| {ref.seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
