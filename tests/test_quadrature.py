"""ln Z by grid quadrature: the reference values, closed forms, and the window search."""

import math

import pytest
import torch

from nfcli.diagnostics import choose_window, quadrature
from nfcli.energy import load_energy
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
