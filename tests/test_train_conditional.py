"""One conditional fit for a family: its KL against quadrature at several conditions, the
per-condition report, and a stop."""

import math

import pytest
import torch
from test_interrupt import stop_after

from nfcli.conditional_report import evaluate_at, summarise
from nfcli.conditions import load_conditional_energy, parse_conditions
from nfcli.config import FitConfig
from nfcli.train_conditional import fit_conditional

FAMILY = "(x - m)**2/(2*s**2)"  # N(m, s²): ln Z = ln(s√(2π)) changes with s


def test_one_fit_matches_every_member_of_a_family():
    """q(·|m, s) against N(m, s²) at the corners and the centre of m ∈ [−2, 2], s ∈ [0.5, 2]:
    KL(q‖p) by quadrature below 0.02 nats at each, and ln Z by quadrature is the exact one."""
    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    result = fit_conditional(energy, FitConfig(K=4, iters=1500, batch=512, seed=0))
    grid = torch.tensor([[-2.0, 0.5], [2.0, 2.0], [0.0, 1.0], [-2.0, 2.0], [2.0, 0.5]])
    points = evaluate_at(result.flow, energy, grid, n=5000)
    for p in points:
        assert p.log_z_quadrature == pytest.approx(
            math.log(p.c[1] * math.sqrt(2 * math.pi)), abs=1e-3
        )
        assert p.kl_qp < 0.02, (p.c, p.kl_qp)
    s = summarise(points)
    assert s.worst_kl_qp == max(p.kl_qp for p in points) and s.points == 5
    assert result.loss.shape == (1500,) and result.stopped is None


def test_a_stop_ends_the_fit_at_that_step():
    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    result = fit_conditional(energy, FitConfig(K=2, iters=500, batch=64), stop=stop_after(37))
    assert result.stopped == "interrupted" and len(result.loss) == 37
