"""ln Z by grid quadrature (1-D and 2-D): the reference values, closed forms, and the window
search."""

import math

import pytest
import torch

from nfcli.diagnostics import choose_window, compare_on_grid, quadrature
from nfcli.energy import load_energy
from nfcli.flows import Flow
from nfcli.targets import TARGETS


@pytest.mark.parametrize("name", list(TARGETS))
def test_builtin_reference_log_z_is_reproduced_by_quadrature(name):
    energy = load_energy(name)
    grid = quadrature(energy, ((-7.0, 7.0), (-7.0, 7.0)), n=1000)
    assert grid.log_z == pytest.approx(TARGETS[name].log_z, abs=2e-4)
    assert grid.edge_mass < 1e-6


def test_gaussian_log_z_matches_closed_form():
    energy = load_energy("(x - 0.5)**2/(2*0.7**2) + (y - 1)**2/(2*1.3**2)")
    grid = quadrature(energy, ((-6.0, 7.0), (-7.0, 9.0)), n=600)
    assert grid.log_z == pytest.approx(math.log(2 * math.pi * 0.7 * 1.3), abs=1e-6)
    # the grid density is normalised
    cell = (13 / 600) * (16 / 600)
    assert grid.log_p.exp().sum().item() * cell == pytest.approx(1.0, abs=1e-9)


def test_window_widens_until_it_holds_the_mass():
    """Samples from one of two far-apart modes would give a window that misses the other; the
    edge-mass check widens it until ln Z is right."""
    energy = load_energy("-log(exp(-((x - 3)**2 + y**2)/2) + exp(-((x + 3)**2 + y**2)/2))")
    g = torch.Generator().manual_seed(0)
    one_mode = torch.randn(5000, 2, generator=g) + torch.tensor([3.0, 0.0])
    grid = choose_window(one_mode, energy)
    assert grid.log_z == pytest.approx(math.log(2 * 2 * math.pi), abs=1e-4)
    assert grid.window[0][0] < -5


def test_improper_target_leaves_mass_at_the_edge():
    energy = load_energy("x**2/2", ["x", "y"], check_proper=False)  # flat along y: infinite mass
    samples = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    grid = choose_window(samples, energy)
    assert grid.edge_mass > 0.01


def test_one_dimensional_log_z_of_the_double_well_against_mpmath():
    """1-D fits get ln Z by quadrature too: the double well x⁴/4 − x² against mpmath's quad."""
    import mpmath

    energy = load_energy("x**4/4 - x**2")
    exact = float(
        mpmath.log(mpmath.quad(lambda x: mpmath.exp(x**2 - x**4 / 4), [-mpmath.inf, 0, mpmath.inf]))
    )
    samples = torch.randn(5000, 1, generator=torch.Generator().manual_seed(0)) + 1.4
    grid = choose_window(samples, energy)  # one well's samples: the window must widen to both
    assert grid.log_z == pytest.approx(exact, abs=1e-6)
    assert grid.log_p.shape == (20_000,) and grid.edge_mass < 1e-6
    assert grid.window[0][0] < -2.5 < 2.5 < grid.window[0][1]


def normal_flow_1d(scale: float) -> Flow:
    """q = N(0, scale²): identity planar layers (u = w = 0) on a base of that scale."""
    flow = Flow.of(1, 2, "planar")
    with torch.no_grad():
        flow.transforms[0].u.zero_()
        flow.transforms[0].w.zero_()
        flow.base.log_scale.fill_(math.log(scale))
    return flow


def test_one_dimensional_grid_kl_both_ways_against_closed_forms():
    """q = N(0, 0.8²) against p = N(0, 1): KL(p‖q) = ln 0.8 + 1/(2·0.64) − ½ on a 1-D grid."""
    energy, flow = load_energy("x**2/2"), normal_flow_1d(0.8)
    log_z = 0.5 * math.log(2 * math.pi)
    kl_pq, tv = compare_on_grid(flow.double(), energy, ((-9.0, 9.0),), log_z)
    assert kl_pq == pytest.approx(math.log(0.8) + 1 / (2 * 0.64) - 0.5, rel=1e-4)
    # TV of N(0,1) and N(0,0.8²): the densities cross at ±c, c² = ln(1/0.64)/(1/0.64 − 1)
    c = math.sqrt(math.log(1 / 0.64) / (1 / 0.64 - 1))
    expected = math.erf(c / (0.8 * math.sqrt(2))) - math.erf(c / math.sqrt(2))
    assert tv == pytest.approx(expected, rel=1e-4)


def test_a_one_dimensional_report_has_the_exact_kl_both_ways():
    """The trust report of a 1-D fit: for q = N(0, 0.8²) and p = N(0, 1), KL(q‖p) =
    −ln 0.8 + 0.64/2 − ½ and KL(p‖q) = ln 0.8 + 1/(2·0.64) − ½, from quadrature."""
    from nfcli.run import evaluate

    energy, flow = load_energy("x**2/2"), normal_flow_1d(0.8)
    samples = flow.sample(20_000, torch.Generator().manual_seed(0))
    r = evaluate(flow, energy, samples, sets=1)
    q = r.quadrature
    assert q is not None and q.log_z == pytest.approx(0.5 * math.log(2 * math.pi), abs=1e-6)
    assert q.kl_qp == pytest.approx(-math.log(0.8) + 0.32 - 0.5, abs=4 * q.kl_qp_se + 1e-4)
    assert q.kl_pq == pytest.approx(math.log(0.8) + 1 / 1.28 - 0.5, rel=1e-3)
    assert r.kl_qp == q.kl_qp


def test_a_skew_normal_written_the_textbook_way_fits_its_quadrature_truth():
    """−log(1 + erf(5x/√2)) is +∞ in float32 for x below about −0.8 if computed as written (the
    fit stopped at step 200); compiled to log_ndtr, a short fit reaches KL(q‖p) < 0.05 nats
    against ln Z by quadrature (ln Z = ln 2π exactly: the skew factor 2Φ(5x) integrates out)."""
    from nfcli import FitConfig, fit
    from nfcli.diagnostics import importance_sampling

    energy = load_energy("x**2/2 + y**2/2 - log(1 + erf(5*x/sqrt(2)))")
    result = fit(energy, FitConfig(K=16, iters=1500, batch=256))
    assert result.stopped is None and result.counts["nonfinite_energies"] == 0
    grid = quadrature(energy, ((-6.0, 6.0), (-6.0, 6.0)), n=800)
    assert grid.log_z == pytest.approx(math.log(2 * math.pi), abs=1e-4)
    torch.manual_seed(0)
    elbo = importance_sampling(result.flow, energy, 20_000).elbo
    assert 0 <= grid.log_z - elbo < 0.05
