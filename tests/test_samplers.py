"""The reference MCMC samplers: moments of known targets, the support, reversibility, seeds."""

import math

import pytest
import torch

from nfcli.energy import load_energy
from nfcli.flows import Flow
from nfcli.mcmc.kernels import hmc, independence, leapfrog, neutra, pulled_back, rwmh

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=torch.float64)


def gaussian():
    """N(MEAN, COV) written out: U = ½ (z − μ)ᵀ Σ⁻¹ (z − μ)."""
    p = torch.linalg.inv(COV)
    a, b, c = p[0, 0].item(), p[0, 1].item(), p[1, 1].item()
    text = f"0.5*({a}*(x - 1)**2 + 2*{b}*(x - 1)*(y + 2) + {c}*(y + 2)**2)"
    return load_energy(text)


def starts(chains: int = 4) -> torch.Tensor:
    return torch.randn(chains, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)


@pytest.mark.parametrize(
    "sampler, kwargs, accept",
    [
        (rwmh, dict(n=6000, warmup=1000), (0.15, 0.35)),
        (hmc, dict(n=600, warmup=200, steps=5), (0.6, 0.99)),
    ],
)
def test_moments_of_a_correlated_gaussian(sampler, kwargs, accept):
    chains = sampler(gaussian(), starts(), seed=1, **kwargs)
    z = chains.draws.reshape(-1, 2)
    torch.testing.assert_close(z.mean(0), MEAN, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), COV, atol=0.25, rtol=0)
    assert chains.draws.shape == (4, kwargs["n"], 2)
    assert ((chains.accept > accept[0]) & (chains.accept < accept[1])).all(), chains.accept


def test_the_same_seed_gives_the_same_chains():
    energy = gaussian()
    a, b = (hmc(energy, starts(), 50, warmup=20, seed=3) for _ in range(2))
    assert torch.equal(a.draws, b.draws) and torch.equal(a.step, b.step)
    assert not torch.equal(a.draws, hmc(energy, starts(), 50, warmup=20, seed=4).draws)


def test_leapfrog_is_reversible():
    """Negating the momentum and integrating again returns to the start: with volume
    preservation, what makes the HMC proposal symmetric (detailed balance)."""
    energy = gaussian()
    z = starts()
    r = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z.requires_grad_(True)
    (g,) = torch.autograd.grad(energy(z).double().sum(), z)
    eps = torch.full((4,), 0.3, dtype=torch.float64)
    z1, r1, _, g1 = leapfrog(energy, z.detach(), r, g, eps, 7)
    z2, r2, _, _ = leapfrog(energy, z1, -r1, g1, eps, 7)
    torch.testing.assert_close(z2, z.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(-r2, r, atol=1e-10, rtol=0)


@pytest.mark.parametrize("sampler", [rwmh, hmc])
def test_draws_stay_in_the_support(sampler):
    """A half-normal (U NaN for x ≤ 0): proposals outside are rejected; its mean is √(2/π).
    HMC's trajectories that cross the wall are rejected too, so its warm-up shrinks ε (to
    ~0.03–0.09 here) and it mixes slowly there: its mean is checked more loosely."""
    energy = load_energy("Piecewise((x**2/2, x > 0))")
    init = torch.full((4, 1), 0.5, dtype=torch.float64)
    if sampler is rwmh:
        chains, tol = rwmh(energy, init, 3000, warmup=300, seed=2), 0.08
    else:
        chains, tol = hmc(energy, init, 600, warmup=300, seed=2, steps=5), 0.3
    assert (chains.draws > 0).all()
    assert chains.draws.mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=tol)


def test_independence_mh_corrects_a_flow_that_is_too_wide():
    """q = N(μ, (1.5σ)²) per axis, a flow that is wrong on purpose: its draws have 1.5× p's
    spread, the chains' draws have p's (asymptotically exact whatever q's error)."""
    energy = load_energy("(x - 0.5)**2/(2*0.7**2) + (y + 1)**2/(2*1.3**2)")
    flow = Flow.of(2, 2, "planar")
    with torch.no_grad():
        flow.transforms[0].u.zero_()
        flow.transforms[0].w.zero_()
        flow.base.loc.copy_(torch.tensor([0.5, -1.0]))
        flow.base.log_scale.copy_(torch.log(torch.tensor([0.7, 1.3]) * 1.5))
    chains = independence(flow, energy, 4, 5000, seed=0)
    z = chains.draws.reshape(-1, 2)
    torch.testing.assert_close(
        z.mean(0), torch.tensor([0.5, -1.0], dtype=torch.float64), atol=0.05, rtol=0
    )
    torch.testing.assert_close(
        z.std(0), torch.tensor([0.7, 1.3], dtype=torch.float64), atol=0.05, rtol=0
    )
    # acceptance of an independence sampler with q = p·(over-dispersed): well below 1, above 0.3
    assert ((chains.accept > 0.3) & (chains.accept < 0.8)).all(), chains.accept
    assert flow.sample(20_000, torch.Generator().manual_seed(0)).std(0)[0] > 1.0  # q is wrong


def test_neutra_samples_p_through_a_flow_and_moves_freely_where_q_is_close():
    """A flow that maps N(0, I) to a diagonal Gaussian near p = N(MEAN, COV) (correlation 0.57
    left for HMC to find): NeuTra's draws, mapped back, have p's moments; the pulled-back energy
    at ε is U(f(ε)) − Σ ln σ (identity layers)."""
    energy = gaussian()
    flow = Flow.of(2, 2, "planar")
    with torch.no_grad():
        flow.transforms[0].u.zero_()
        flow.transforms[0].w.zero_()
        flow.base.loc.copy_(MEAN.float())
        flow.base.log_scale.copy_(COV.diagonal().sqrt().log().float())
    eps = torch.randn(5, 2, dtype=torch.float64)
    z = MEAN + COV.diagonal().sqrt() * eps
    expected = energy(z).double() - COV.diagonal().sqrt().log().sum()
    torch.testing.assert_close(pulled_back(flow, energy)(eps), expected, atol=1e-6, rtol=1e-6)
    chains = neutra(flow, energy, 4, 400, warmup=150, seed=0, steps=5)
    draws = chains.draws.reshape(-1, 2)
    torch.testing.assert_close(draws.mean(0), MEAN, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), COV, atol=0.25, rtol=0)
    assert (chains.accept > 0.6).all()
