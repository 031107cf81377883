"""A start from several modes (``nfcli.mixture``, ``nfcli.bases.GaussianMixture``): the mixture
base's density and draws, the survey of U's modes and its completeness, the weights from
importance sampling, a flow that starts as the modes' mixture exactly, and fits that keep every
mode (in 3-D from the start search, in 2-D where the modes lie beyond the paper's start)."""

from __future__ import annotations

import math

import pytest
import torch

from nfcli import FitConfig
from nfcli.bases import GaussianMixture, build_base
from nfcli.checkpoint import load_checkpoint
from nfcli.energy import Energy
from nfcli.flows import Flow
from nfcli.mixture import (
    mixture_components,
    mixture_start,
    modes_out_of_reach,
    reweight,
    survey,
)
from nfcli.mode import gaussian_start
from nfcli.run import run_fit
from nfcli.train import fit, low_dimensional_start, plan


def gaussians(centres: list[list[float]], weights: list[float] | None = None) -> Energy:
    """U = −ln Σ_k w_k N(z; μ_k, I): normalised, so ln Z = 0."""
    mu = torch.tensor(centres, dtype=torch.float64)
    w = torch.tensor(weights or [1 / len(centres)] * len(centres), dtype=torch.float64)
    D = mu.shape[1]

    def u(z: torch.Tensor) -> torch.Tensor:
        sq = ((z[:, None, :] - mu.to(z.dtype)) ** 2).sum(-1)
        log_n = -0.5 * sq - 0.5 * D * math.log(2 * math.pi)
        return -torch.logsumexp(torch.log(w.to(z.dtype)) + log_n, -1)

    return energy_of(u, D)


def energy_of(u, dim: int) -> Energy:
    names = tuple(f"x{i + 1}" for i in range(dim))
    source = {"kind": "expression", "text": "test", "path": None, "name": None}
    return Energy(u, names, {**source, "vars": list(names)})


def wells(z: torch.Tensor) -> torch.Tensor:
    """Independent double wells, one per coordinate: 2^D modes."""
    return (z**4 - 6 * z**2 - 0.5 * z).sum(-1)


def nearest_shares(z: torch.Tensor, centres: list[list[float]]) -> torch.Tensor:
    mu = torch.tensor(centres, dtype=z.dtype)
    nearest = ((z[:, None, :] - mu) ** 2).sum(-1).argmin(1)
    return torch.bincount(nearest, minlength=len(centres)).double() / len(z)


THREE = [[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]]  # 8.5 sds apart


@pytest.fixture
def mixture_base() -> GaussianMixture:
    torch.manual_seed(0)
    base = build_base({"type": "gaussian_mixture", "scale": 1.0, "components": 4}, 3, 2)
    base = base.double()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.5 * torch.randn_like(p))
        base.log_weights.copy_(torch.log_softmax(torch.randn(2, 4, dtype=torch.float64), -1))
    return base


def test_the_mixture_base_is_torch_distributions_mixture(mixture_base):
    base = mixture_base
    z = 3 * torch.randn(2, 50, 3, dtype=torch.float64)
    sigma = base.log_scale.exp().detach()
    for r in range(2):
        loc = base.loc[r].detach() + sigma[r] * base.means[r].detach()
        tril = torch.diag(sigma[r]) @ base.cholesky[r].detach()
        components = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
        mix = torch.distributions.Categorical(logits=base.log_weights[r])
        ref = torch.distributions.MixtureSameFamily(mix, components)
        torch.testing.assert_close(base.log_prob(z)[r], ref.log_prob(z[r]), rtol=1e-12, atol=1e-12)


def test_its_draws_have_the_weights_in_any_prefix_and_their_own_density(mixture_base):
    base = mixture_base
    z, log_q = base.rsample(40_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_q, base.log_prob(z), rtol=1e-10, atol=1e-10)
    c = base.choose(40_000, torch.Generator().manual_seed(2))
    w = base.log_weights.exp()
    for r in range(2):
        counts = torch.bincount(c[r], minlength=4).double()
        assert (counts - 40_000 * w[r]).abs().max() <= 1.0  # systematic: within one draw
        first = torch.bincount(c[r, :4000], minlength=4).double() / 4000  # shuffled order
        assert (first - w[r]).abs().max() < 0.03


def test_reparametrised_in_the_components_not_the_weights(mixture_base):
    z, _ = mixture_base.rsample(100, torch.Generator().manual_seed(3))
    z.sum().backward()
    assert mixture_base.means.grad.abs().sum() > 0 and mixture_base.tril.grad is not None
    assert not mixture_base.log_weights.requires_grad


def test_the_survey_finds_separated_modes_and_knows_when_the_set_is_incomplete():
    three = survey(gaussians(THREE), None, starts=256)
    assert len(three.modes) == 3 and three.complete
    found = sorted(m.mode.round().tolist() for m in three.modes)
    assert found == sorted(THREE)
    many = survey(energy_of(wells, 8), None, starts=128)  # 2^8 modes, twice as many as starts
    assert not many.complete


def test_a_flow_from_the_modes_starts_as_their_mixture_exactly():
    energy = gaussians(THREE, [0.5, 0.3, 0.2])
    comps = mixture_components(survey(energy, None, starts=256).modes)
    config = FitConfig(flow="realnvp", start="mode", components=comps.count).resolve(3)
    flow = Flow(3, config.architecture(3)).double()
    flow.start_at_modes(comps)
    with torch.no_grad():
        z, log_q = flow.rsample(20_000, torch.Generator().manual_seed(0))
    log_w = -energy(z) - log_q
    assert float(log_w.abs().max()) < 1e-6  # q = p: every weight is Z = 1
    shares = nearest_shares(z, THREE)
    assert (shares - torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)).abs().max() < 0.01


def test_reweighting_finds_each_modes_share_of_the_mass():
    truth = [0.5, 0.3, 0.2]
    energy = gaussians(THREE, truth)
    comps = mixture_components(survey(energy, None, starts=256).modes)
    config = FitConfig(flow="realnvp", start="mode", components=comps.count).resolve(3)
    flow = Flow(3, config.architecture(3)).double()
    comps.log_weights = torch.log(torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64))
    flow.start_at_modes(comps)
    weights = torch.tensor(reweight(flow, energy, n=8192, seed=1)[0], dtype=torch.float64)
    L = torch.linalg.cholesky(comps.covariance)
    modes = comps.mean + comps.means @ L.T  # each component's mode, in z
    at = torch.cdist(modes, torch.tensor(THREE, dtype=torch.float64)).argmin(1)
    torch.testing.assert_close(
        weights, torch.tensor(truth, dtype=torch.float64)[at], atol=0.02, rtol=0
    )


def test_a_fit_from_several_modes_keeps_them_all():
    """Three equal modes in 3-D: from one Gaussian over them, reverse KL kept one (the issue's
    0.9998 / 0.0002 / 0); the mixture start keeps each near 1/3, in a fit of few steps."""
    energy = gaussians(THREE)
    result = fit(energy, FitConfig(iters=300, seed=0))
    assert result.config.components == 3 and result.start.source == "mixture"
    z = result.flow.sample(20_000, torch.Generator().manual_seed(0)).double()
    assert (nearest_shares(z, THREE) - 1 / 3).abs().max() < 0.03


def test_a_mixture_fit_round_trips_through_its_checkpoint(tmp_path):
    energy = gaussians(THREE)
    ckpt, report = run_fit(energy, FitConfig(iters=150), tmp_path)
    assert report.start_source == "mixture"
    loaded = load_checkpoint(tmp_path / "model.pt")
    z = torch.randn(64, 3, dtype=torch.float64) * 4
    f = ckpt.flow.float64()
    torch.testing.assert_close(loaded.flow.float64().log_prob(z), f.log_prob(z))
    assert loaded.config.components == 3


def test_in_2d_the_paper_start_stays_unless_modes_lie_beyond_its_reach():
    far = gaussians([[20.0, 0.0], [-20.0, 0.0], [0.0, 20.0]])
    near = gaussians([[2.0, 0.0], [-2.0, 0.0]])
    assert modes_out_of_reach(far, 6.0) and not modes_out_of_reach(near, 6.0)
    assert plan(near, FitConfig()).start == "origin"
    planned = plan(far, FitConfig())
    assert (planned.start, planned.flow, planned.converge) == ("mode", "realnvp", True)
    kept = low_dimensional_start(far, FitConfig(start="origin"))
    assert kept.start == "origin"  # a start asked for is kept


def test_no_mixture_where_the_modes_found_are_not_all_of_them():
    """Combinatorially many modes (independent double wells): the start search finds several,
    the survey finds nearly every start in a mode of its own, so no mixture is made."""
    energy = energy_of(wells, 8)
    start = gaussian_start(energy)
    assert start.modes > 1 and mixture_start(energy, start.laplace) is None


def test_modes_the_starts_lbfgs_did_not_reach_are_found_by_the_survey():
    """Modes at 0, 10·e1, 10·e2: the start's eight L-BFGS runs (from the origin and N(0, 2²))
    all end at the origin's; the survey finds the other two, and the fit keeps all three."""
    far = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]]
    energy = gaussians(far)
    assert gaussian_start(energy).modes == 1
    result = fit(energy, FitConfig(iters=100))
    assert result.config.components == 3
    z = result.flow.sample(20_000, torch.Generator().manual_seed(0)).double()
    assert (nearest_shares(z, far) - 1 / 3).abs().max() < 0.03
