"""The mode-finding start (issue 13): L-BFGS in float64 and the Laplace approximation."""

import math

import pytest
import torch

from nfcli.energy import Energy, load_energy
from nfcli.errors import NfcliError
from nfcli.mode import find_mode, laplace, mode_and_laplace


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
