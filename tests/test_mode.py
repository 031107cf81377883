"""The mode-finding start (issue 13): L-BFGS in float64 and the Laplace approximation."""

import math

import pytest
import torch

from nfcli.config import FitConfig
from nfcli.energy import Energy, load_energy
from nfcli.errors import NfcliError
from nfcli.flows import Flow
from nfcli.mode import (
    find_mode,
    gaussian_elbo,
    gaussian_start,
    laplace,
    mode_and_laplace,
    proper_mode,
)


def gaussian_energy(mean: torch.Tensor, cov: torch.Tensor) -> Energy:
    prec = torch.linalg.inv(cov)

    def fn(z: torch.Tensor) -> torch.Tensor:
        d = z - mean.to(z)
        return 0.5 * ((d @ prec.to(z)) * d).sum(-1)

    names = tuple(f"x{i}" for i in range(len(mean)))
    return Energy(fn, names, {"kind": "test", "text": "", "path": None, "name": None})


@pytest.mark.parametrize("condition", [1e6, 1e8])
def test_a_badly_scaled_gaussian_gives_back_its_mean_and_covariance(condition):
    """Variances from 1e-3 · to 1e3 · (condition 1e6 or more) along a random rotation, the mean
    far from the origin: the mean to 1e-3 sd along every axis, the covariance to 1e-6 relative."""
    D = 10
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.logspace(-0.5 * math.log10(condition), 0.5 * math.log10(condition), D)
    cov = (q * lam.double()) @ q.T
    mean = torch.randn(D, generator=g, dtype=torch.float64) * 30
    result = mode_and_laplace(gaussian_energy(mean, cov))
    sd = cov.diagonal().sqrt()
    assert ((result.mode - mean).abs() / sd).max() < 1e-3
    torch.testing.assert_close(result.covariance, cov, rtol=1e-6, atol=1e-9 * float(lam.max()))
    exact = 0.5 * D * math.log(2 * math.pi) + 0.5 * float(torch.logdet(cov))
    assert result.log_z == pytest.approx(exact, abs=1e-6)
    assert result.min_curvature > 0 and result.starts == 4


def test_laplace_is_the_curvature_at_the_mode_not_the_shape_elsewhere():
    """U = x²/2 + y²/2 + x⁴/4: the quartic adds no curvature at the mode 0, so the Laplace
    Gaussian is N(0, I) although p is narrower in x."""
    energy = load_energy("x**2/2 + y**2/2 + x**4/4")
    mode, _ = find_mode(energy, starts=1)
    result = laplace(energy, mode)
    torch.testing.assert_close(result.mode, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(result.covariance, torch.eye(2, dtype=torch.float64))


def test_the_lowest_of_several_modes_is_kept():
    """Two wells, the deeper at x = 3: starts that fall in either keep the deeper one."""
    energy = load_energy("(x**2 - 9)**2/20 - x/2 + y**2/2")
    result = mode_and_laplace(energy, starts=6)
    assert result.mode[0] > 2.5


def test_an_energy_finite_nowhere_is_a_clear_error():
    energy = Energy(
        lambda z: torch.full(z.shape[:-1], math.nan, dtype=z.dtype),
        ("x", "y"),
        {"kind": "test", "text": "", "path": None, "name": None},
    )
    with pytest.raises(NfcliError, match="Could not find a mode of U"):
        find_mode(energy, starts=2)


def test_the_gaussian_start_on_a_badly_scaled_gaussian_is_its_laplace_approximation():
    """Condition number 1e6, mean far from the origin: the start is the Laplace Gaussian, or a
    point at the end of the L-BFGS path as good by ELBO (≈ ln Z: q = p here), and a flow started
    there (start "mode") is N(mean, cov)."""
    D = 6
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    cov = (q * torch.logspace(-3, 3, D, dtype=torch.float64)) @ q.T
    mean = torch.randn(D, generator=g, dtype=torch.float64) * 50
    energy = gaussian_energy(mean, cov)
    start = gaussian_start(energy)
    assert start.source in ("laplace", "path")
    exact_log_z = 0.5 * D * math.log(2 * math.pi) + 0.5 * float(torch.logdet(cov))
    assert start.elbo == pytest.approx(exact_log_z, abs=0.3)  # 256 draws: ±0.1 (1 se)
    flow = Flow(D, FitConfig(flow="realnvp", start="mode", converge=True).architecture())
    flow = flow.double()
    flow.start_at(start.mean, start.covariance)
    z = flow.sample(200_000, torch.Generator().manual_seed(0))
    sd = cov.diagonal().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.02
    torch.testing.assert_close(
        torch.cov(z.T) / torch.outer(sd, sd), cov / torch.outer(sd, sd), atol=0.02, rtol=0
    )


def centred_hierarchy(z: torch.Tensor) -> torch.Tensor:
    """Three groups, θ_j ~ N(μ, τ²), y_j ~ N(θ_j, 1), μ ~ N(0, 5²), τ ~ HalfCauchy(5), in
    (μ, s = ln τ, θ_1..3): U falls as 2s down the neck (θ = μ, τ → 0), so p has no mode."""
    y = torch.tensor([2.0, -1.0, 0.5], dtype=z.dtype)
    mu, s, theta = z[:, 0], z[:, 1], z[:, 2:]
    prior = mu**2 / 50 + torch.log1p(torch.exp(2 * s) / 25) - s
    group = ((theta - mu[:, None]) ** 2).sum(-1) * torch.exp(-2 * s) / 2 + 3 * s
    return prior + group + ((y - theta) ** 2).sum(-1) / 2


def test_without_a_mode_the_start_is_a_gaussian_from_the_path_not_the_neck():
    """Where L-BFGS runs down the neck, the start is a Gaussian from a path point: finite, better
    by ELBO than the paper's N(0, 2²), and not down the neck."""
    energy = Energy(centred_hierarchy, ("mu", "s", "t1", "t2", "t3"), {"kind": "test"})
    start = gaussian_start(energy)
    assert start.source == "path"
    draws = torch.randn(256, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    origin = gaussian_elbo(energy, torch.zeros(5).double(), 4 * torch.eye(5).double(), draws)
    assert math.isfinite(start.elbo) and start.elbo > origin
    assert torch.linalg.eigvalsh(start.covariance).min() > 0
    assert start.mean[1] > -5  # τ > e⁻⁵


def test_proper_mode_tells_a_mode_from_a_flat_or_unbounded_energy():
    at = torch.tensor([3.0, -2.0], dtype=torch.float64)
    found = proper_mode(load_energy("0.5*((x-60)**2 + (y+60)**2)"), at)
    torch.testing.assert_close(found, torch.tensor([60.0, -60.0], dtype=torch.float64))
    assert proper_mode(load_energy("x**2/2", ["x", "y"], check_proper=False), at) is None
    assert proper_mode(load_energy("x**2/2 - y", check_proper=False), at) is None
    valley = load_energy("0.5*((y - sin(2*pi*x/4))/0.4)**2", check_proper=False)
    assert proper_mode(valley, at) is None


def test_several_modes_give_one_gaussian_over_all_of_them_and_a_fit_that_keeps_both():
    """½ N(−2·1, I) + ½ N(2·1, I) in 6-D: L-BFGS ends in both modes; one mode's Gaussian would
    lose the other, so the start is their moment-matched mixture, N(0, I + 4·11ᵀ), and the fit
    keeps both as a mixture base (``nfcli.mixture``) on that Gaussian's coordinates, with no
    annealing (before issue 27 it annealed one Gaussian over both, and could lose one)."""
    from nfcli.train import fit

    energy = load_energy("benchmarks/targets/mixture6.py")
    start = gaussian_start(energy)
    assert (start.source, start.modes) == ("modes", 2)
    torch.testing.assert_close(start.mean, torch.zeros(6, dtype=torch.float64), atol=1e-4, rtol=0)
    expected = torch.eye(6, dtype=torch.float64) + 4 * torch.ones(6, 6, dtype=torch.float64)
    torch.testing.assert_close(start.covariance, expected, atol=1e-4, rtol=1e-4)
    quick = FitConfig(flow="realnvp", K=1, hidden=[4], iters=8, batch=16)
    fitted = fit(energy, quick).config
    assert (fitted.components, fitted.anneal_steps) == (2, 0)
    one = gaussian_start(load_energy("benchmarks/targets/student5.py"))
    assert one.modes == 1 and one.source == "laplace"


def test_mode_search_survives_the_walls_of_a_bounded_support():
    """U is NaN outside (0, 1) (a Beta(2, 5)): torch's strong-Wolfe line search raised IndexError
    when NaN emptied its bracket, from nearly every start; the search now keeps the last point
    where U was finite, inside the support."""
    energy = load_energy("-log(x) - 4*log(1 - x) + y**2/2 + z**2/2")
    for c in (0.05, 0.5, 0.95):
        mode, finite = find_mode(energy, points=[torch.tensor([c, 1.0, -1.0], dtype=torch.float64)])
        assert finite == 1 and 0 < mode[0] < 1
    start = gaussian_start(energy, seed=0)
    assert 0 < float(start.mean[0]) < 1


def test_a_start_narrower_than_the_fits_precision_resolves_is_left_out():
    """A mode at x = 1000 with sd 1e-4 (1e-7 of its location, under float32's rounding unit):
    its Laplace Gaussian is the start in float64, and left out in float32, where q's draws would
    round to a handful of values (down a funnel's neck L-BFGS ends at such Gaussians, sd 1e-12
    of the mean, and a float32 fit started there stayed, its loss pure rounding)."""
    from nfcli.mode import resolution, resolvable

    energy = load_energy("((x - 1000)/1e-4)**2/2 + y**2/2 + z**2/2")
    wide = gaussian_start(energy, resolution=resolution(torch.float64))
    assert wide.source == "laplace" and abs(float(wide.mean[0]) - 1000) < 1e-6
    narrow = gaussian_start(energy, resolution=resolution(torch.float32))
    assert narrow.source != "laplace"
    assert resolvable(narrow.mean, narrow.covariance, resolution(torch.float32))
    assert not resolvable(wide.mean, wide.covariance, resolution(torch.float32))
