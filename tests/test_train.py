"""The fit loop: reproducible by seed, the paper's β schedule, the learning-rate schedule."""

import math

import pytest
import torch

from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.train import FitConfig, beta_schedule, fit, lr_factor


def test_same_seed_same_fit_and_global_random_state_untouched():
    energy = load_energy("x**2/2 + (y - 1)**2")
    cfg = FitConfig(K=4, iters=50, batch=64, seed=3)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = fit(energy, cfg), fit(energy, cfg)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, p), q in zip(a.flow.state_dict().items(), b.flow.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(a.loss, b.loss)
    c = fit(energy, FitConfig(K=4, iters=50, batch=64, seed=4))
    assert not torch.equal(a.loss, c.loss)


def test_fit_lowers_the_loss_towards_minus_log_z():
    """A Gaussian with ln Z = ln(2π·0.5): after a short fit F(β=1) is within 0.05 of −ln Z."""
    energy = load_energy("x**2 + y**2")  # σ² = 1/2 in each axis
    result = fit(energy, FitConfig(K=2, iters=600, batch=512, anneal=100))
    tail = result.loss_beta1[-100:].mean().item()
    assert tail == pytest.approx(-math.log(2 * math.pi * 0.5), abs=0.05)
    assert result.loss_beta1[:50].mean().item() > tail + 0.1


def test_beta_schedule_is_the_papers():
    assert beta_schedule(0, 10_000) == pytest.approx(0.01)
    assert beta_schedule(5_000, 10_000) == pytest.approx(0.51)
    assert beta_schedule(9_900, 10_000) == pytest.approx(1.0)
    assert beta_schedule(20_000, 10_000) == 1.0
    assert beta_schedule(0, 0) == 1.0
    steps = torch.tensor([0, 5_000, 20_000])
    torch.testing.assert_close(beta_schedule(steps, 10_000), torch.tensor([0.01, 0.51, 1.0]))


def test_learning_rate_is_held_then_decays_to_zero():
    assert lr_factor(0, 1000, 0.3) == 1.0
    assert lr_factor(699, 1000, 0.3) == 1.0
    assert lr_factor(850, 1000, 0.3) == pytest.approx(0.5)
    assert lr_factor(999, 1000, 0.3) < 0.001
    assert lr_factor(999, 1000, 0.0) == 1.0


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"K": 0}, "K = 0"),
        ({"iters": 0}, "iters = 0"),
        ({"batch": -1}, "batch = -1"),
        ({"lr": float("nan")}, "lr = nan"),
        ({"lr": -1e-3}, "lr = -0.001"),
        ({"flow": "iaf"}, "Unknown flow type 'iaf'"),
        ({"anneal": -1}, "anneal = -1"),
    ],
)
def test_invalid_options_are_refused_before_any_work(change, fragment):
    with pytest.raises(NfcliError, match=fragment):
        fit(load_energy("x**2"), FitConfig(**change))
