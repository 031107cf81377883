"""Energies that misbehave during a fit: non-finite values and gradients, improper targets."""

import pytest
import torch
from test_interrupt import stop_after, through_checkpoint

from nfcli.energy import Energy, load_energy
from nfcli.train import (
    CHECK_EVERY,
    SPREAD_SPAN,
    WALL_SLOPE,
    FitConfig,
    Inside,
    fit,
    proper_by_quadrature,
    spreading,
    wall_rise,
)

QUICK = dict(K=4, batch=64, anneal=100)


def finite_params(flow) -> bool:
    return all(bool(v.isfinite().all()) for v in flow.state_dict().values())


def test_nan_energy_on_half_the_plane_is_masked_counted_and_the_fit_goes_on():
    energy = load_energy("-log(x) + x + y**2/2")  # a Gamma(2) in x: NaN for x < 0
    result = fit(energy, FitConfig(iters=600, **QUICK))
    assert result.stopped is None and result.steps == 600
    assert result.counts["nonfinite_energies"] > 0
    assert finite_params(result.flow)
    assert torch.isfinite(result.loss_beta1[-50:]).all()


def test_the_wall_energy_rises_with_the_distance_to_the_nearest_sample_inside():
    z = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-3.0, 4.0], [4.0, 4.0]]], requires_grad=True)
    u = torch.tensor([[2.0, 5.0, float("nan"), float("inf")]])
    finite, wall = u.isfinite(), ~u.isfinite()
    top, rise = wall_rise(z, u, finite, wall, Inside(z.detach()[0, :1], u[0, :1]))
    sigma = z.detach().std(1).mean().item()
    assert top.tolist() == [5.0]
    # (−3, 4) is 5 from (0, 0); (4, 4) is 5 from (1, 0): the nearest inside, not the lowest U
    assert rise[0, :2].tolist() == [0.0, 0.0]
    assert rise[0, 2:].tolist() == pytest.approx([WALL_SLOPE * 5 / sigma] * 2)
    rise.sum().backward()
    pull = -z.grad[0] * sigma / WALL_SLOPE  # descent moves each sample straight back in
    assert pull[2].tolist() == pytest.approx([0.6, -0.8]) and pull[3].tolist() == pytest.approx(
        [-0.6, -0.8]
    )
    assert z.grad[0, :2].abs().max() == 0


@pytest.mark.parametrize("slope", [WALL_SLOPE, 0.0])
def test_samples_outside_the_support_are_pulled_back(monkeypatch, slope):
    """U is undefined (NaN) for x ≤ 0: a half-normal in x. Left out of the loss and unpulled
    (slope 0: no force back), q drifts out of the support, most of its mass ending outside; the
    wall keeps all but a little of it inside."""
    monkeypatch.setattr("nfcli.train.WALL_SLOPE", slope)
    energy = load_energy("Piecewise((x**2/2 + y**2/2, x > 0))")
    result = fit(energy, FitConfig(iters=600, **QUICK))
    z = result.flow.sample(20_000, torch.Generator().manual_seed(0))
    outside = float((z[:, 0] <= 0).float().mean())
    if slope:
        assert result.stopped is None and outside < 0.03
    else:
        assert outside > 0.5


def test_nan_gradient_rows_are_zeroed_and_counted():
    """torch.where(x < 0, 0, sqrt(x)) is finite everywhere, but its gradient is NaN at x < 0:
    where passes 0 to the sqrt branch, and 0 · ∂sqrt(x)/∂x is NaN there."""

    def u(z: torch.Tensor) -> torch.Tensor:
        x, y = z[:, 0], z[:, 1]
        return x**2 / 2 + y**2 / 2 + torch.where(x < 0, 0.0, x.sqrt())

    energy = Energy(u, ("x", "y"), {"kind": "builtin", "name": "t", "vars": ["x", "y"]})
    result = fit(energy, FitConfig(iters=300, **QUICK))
    assert result.counts["nonfinite_gradients"] > 0
    assert result.counts["nonfinite_energies"] == 0
    assert finite_params(result.flow) and result.stopped is None
    assert torch.isfinite(result.loss_beta1).all()


def test_overflowing_energy_skips_steps_but_never_corrupts_the_parameters():
    energy = load_energy("x**2/2 + y**2/2 + exp(100*x)")  # inf in float32 for x > 0.89
    result = fit(energy, FitConfig(iters=300, **QUICK))
    assert result.counts["nonfinite_energies"] > 0
    assert finite_params(result.flow)


def test_energy_nan_everywhere_stops_with_a_message_and_finite_parameters():
    energy = load_energy("log(-x**2 - 1) + y**2")
    result = fit(energy, FitConfig(iters=5000, **QUICK))
    assert result.stopped == "nonfinite" and result.steps == CHECK_EVERY
    assert "NaN or infinite at every sample" in result.message
    assert "Abs" not in result.message  # no advice to wrap the log: that mirrors p
    assert "make U large and finite rather than undefined" in result.message
    assert finite_params(result.flow)
    assert result.counts["skipped_steps"] == CHECK_EVERY  # no update was ever applied
    start = fit(energy, FitConfig(iters=1, **QUICK)).flow  # the initial parameters
    for k, v in start.state_dict().items():
        assert torch.equal(v, result.flow.state_dict()[k]), k


@pytest.mark.parametrize(
    "text, names",
    [
        ("x**2/2", ["x", "y"]),  # y does not appear: infinite mass along y
        ("0.5*((y - sin(2*pi*x/4))/0.4)**2", None),  # the paper's U2 without a taper
        ("x**2/2 - y", None),  # U has no lower bound
    ],
)
def test_improper_targets_are_stopped_with_an_explanation(text, names):
    iters = 2000
    energy = load_energy(text, names, check_proper=False)  # as if load_energy had not caught it
    result = fit(energy, FitConfig(K=8, batch=256, iters=iters, anneal=300))
    assert result.stopped == "improper", [c["loss"] for c in result.state.checks]
    assert result.steps < iters - 500
    assert "keeps spreading" in result.message and "improper" in result.message
    assert finite_params(result.flow)


def test_a_proper_target_far_from_the_start_is_not_called_improper():
    """q travels ~85 units to the mass: for over 1000 steps its loss falls and its median moves, as
    an improper target's would (before the mode check, this fit stopped at step 1400); in 2-D
    quadrature finds p's mass finite (in more dimensions, L-BFGS from q's median finds a proper
    mode ahead), so the fit goes on and arrives."""
    energy = load_energy("0.5*((x - 60)**2 + (y + 60)**2)")
    result = fit(energy, FitConfig(K=8, batch=256, iters=2000, anneal=300))
    assert result.stopped is None and result.steps == 2000
    assert any("proper" in c for c in result.state.checks)  # the check fired and was overruled
    mean = result.flow.sample(2000, torch.Generator().manual_seed(0)).mean(0)
    # most of the way in 2000 steps (the lr decays over the last 600); stopped, it was at ~35
    torch.testing.assert_close(mean, torch.tensor([60.0, -60.0]), atol=6.0, rtol=0)


def test_a_proper_target_runs_to_the_end():
    result = fit(load_energy("u1"), FitConfig(K=8, batch=256, iters=2000, anneal=300))
    assert result.stopped is None and result.steps == 2000
    assert len(result.state.checks) > 2 * SPREAD_SPAN  # the check ran and did not fire


def _checks(losses, extents, medians=None):
    medians = medians or [0.0] * len(losses)
    return [
        {"step": 100 * (i + 1), "loss": [loss], "extent": [e], "median": [[m]], "iqr": [[1.0]]}
        for i, (loss, e, m) in enumerate(zip(losses, extents, medians, strict=True))
    ]


def test_spreading_needs_a_steady_fall_with_growth_in_two_spans():
    cfg, n = FitConfig(), 2 * SPREAD_SPAN + 1
    steady = [-0.1 * i for i in range(n)]
    assert spreading(_checks(steady, [0.1 * i for i in range(n)]), cfg)
    assert spreading(_checks(steady[:-1], [0.1 * i for i in range(n - 1)]), cfg) == ""  # too few
    assert spreading(_checks(steady, [0.0] * n), cfg) == ""  # no growth, no drift
    assert spreading(_checks(steady, [0.0] * n, [i * 0.2 for i in range(n)]), cfg)  # drift
    flat = [0.0] * n
    assert spreading(_checks(flat, [0.1 * i for i in range(n)]), cfg) == ""  # no fall
    # one jump (a mode found late) is not a trend, however large
    jump = [0.0] * SPREAD_SPAN + [-3.0] * (SPREAD_SPAN + 1)
    assert spreading(_checks(jump, [0.0] * SPREAD_SPAN + [2.0] * (SPREAD_SPAN + 1)), cfg) == ""


def test_a_fit_that_starts_outside_the_support_finds_it():
    """A normal truncated to x > 1: q starts at the origin, with every sample outside. A point
    inside is found by probing (``probe_inside``) and q is pulled to it, instead of being left
    with no finite loss and stopped."""
    energy = load_energy("Piecewise((x**2/2, x > 1))")
    result = fit(energy, FitConfig(iters=600, **QUICK))
    assert result.stopped is None
    z = result.flow.sample(20_000, torch.Generator().manual_seed(0))
    assert float((z <= 1).float().mean()) < 0.03
    assert 1.0 < float(z.mean()) < 2.0  # inside, near the mass (the mean is 1.525)


def test_a_fit_with_walls_resumes_exactly():
    """The points inside the support that the wall pulls to are part of the training state:
    interrupted (with restarts, while they explore) and resumed through a checkpoint, a fit
    on a half-plane equals one uninterrupted run."""
    energy = load_energy("Piecewise((x**2/2 + y**2/2, x > 0))")
    config = FitConfig(iters=300, restarts=2, **QUICK)
    whole = fit(energy, config)
    first = fit(energy, config, stop=stop_after(60))
    assert first.state.inside is not None and first.state.inside.point.shape == (2, 2)
    rest = fit(energy, config, resume=through_checkpoint(first.state))
    assert rest.counts["nonfinite_energies"] == whole.counts["nonfinite_energies"] > 0
    torch.testing.assert_close(rest.loss, whole.loss, equal_nan=True)


def test_properness_is_measured_by_quadrature_in_one_and_two_dimensions():
    """An inverse gamma's x⁻⁴ tail (q spreading into it looks like an improper target's spread)
    has finite mass; a free y, or U falling without bound, leave mass at every window's edge."""
    g = torch.Generator().manual_seed(0)
    near = (0.5 + 0.1 * torch.randn(1, 500, 1, generator=g)).abs()
    assert proper_by_quadrature(load_energy("4*log(x) + 2/x"), near)
    plane = torch.randn(1, 500, 2, generator=g)
    assert not proper_by_quadrature(load_energy("x**2/2", ["x", "y"], check_proper=False), plane)
    assert not proper_by_quadrature(load_energy("x**2/2 - y", check_proper=False), plane)
    assert proper_by_quadrature(load_energy("u1"), plane)
