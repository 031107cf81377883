"""The fit loop: reproducible by seed, the paper's β schedule, the learning-rate schedule."""

import math

import pytest
import torch

from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.flows import Flow
from nfcli.train import FitConfig, _keep, beta_schedule, fit, lr_factor, select_step


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


def test_a_kept_restart_continues_exactly_as_in_the_batched_run():
    """After _keep, restart r alone (with its slice of Adam's state) takes the same steps as it
    would have taken inside the batched run, on the same deterministic objective."""
    torch.manual_seed(0)
    flow = Flow.of(2, 3, "planar", init_scale=0.7, restarts=2)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2, fused=True)
    z = torch.randn(2, 64, 2)

    def objective(f, zz):
        out, log_det = f.transform(
            f.base.loc.unsqueeze(1) + f.base.log_scale.exp().unsqueeze(1) * zz
        )
        return ((out - 1) ** 2).sum(-1).mean(-1) - log_det.mean(-1)

    for _ in range(5):
        opt.zero_grad()
        objective(flow, z).sum().backward()
        opt.step()
    single, single_opt = _keep(flow, opt, 1)
    for _ in range(8):
        for f, o, zz in ((flow, opt, z), (single, single_opt, z[1:])):
            o.zero_grad()
            objective(f, zz).sum().backward()
            o.step()
    for (name, a), b in zip(flow.state_dict().items(), single.state_dict().values(), strict=True):
        torch.testing.assert_close(a[1:], b, msg=name)


def test_restarts_choose_when_annealing_ends_and_record_every_restart():
    energy = load_energy("x**2/2 + y**2/2")
    cfg = FitConfig(K=2, iters=120, batch=64, anneal=40, restarts=3)
    assert select_step(cfg) == 40
    assert select_step(FitConfig(iters=100, anneal=0)) == 100  # no annealing: to the end
    result = fit(energy, cfg)
    assert result.flow.restarts == 1 and len(result.restarts) == 3
    assert result.kept == max(result.restarts, key=lambda s: s["score"])["restart"]
    assert torch.isfinite(result.loss_beta1).all()  # the kept restart's history is complete


def test_the_library_exports_what_it_lists():
    import nfcli

    missing = [name for name in nfcli.__all__ if not hasattr(nfcli, name)]
    assert not missing
    namespace: dict = {}
    exec("from nfcli import *", namespace)  # the documented import works
    assert "log_prob" in namespace and "fit" in namespace


def test_the_energys_share_of_the_steps_is_measured_and_grows_with_its_cost():
    """A slow energy (U plus a wait of 10 ms per call, several times a whole step of this tiny
    fit even on a loaded machine) takes most of the steps' time; the cheap one less. Measured on
    the CPU only (where the clock sees the work); no speed is asserted, only the shares' order."""
    import time as _time

    from nfcli.energy import load_energy

    cheap = load_energy("u1")

    class Slow:
        def __getattr__(self, name):
            return getattr(cheap, name)

        def __call__(self, z):
            t = _time.perf_counter()
            while _time.perf_counter() - t < 0.01:
                pass
            return cheap(z)

    config = FitConfig(K=2, iters=20, batch=64)
    fast = fit(cheap, config).energy_share
    slow = fit(Slow(), config).energy_share
    assert 0 < fast < slow <= 1 and slow > 0.5
