"""A funnel's neck is not infinite mass (``nfcli.improper.finite_ahead``): from 3-D on, where no
quadrature can say whether p is proper, a q that drifts or spreads while the loss falls is
stopped as improper only where p's Laplace mass ahead of it does not fall off. Checks made by
hand: q travelling out of a centred hierarchy's neck, q spreading into a heavy tail, and the
improper targets that must still stop (a free coordinate, an unbounded slope, 1/|y| tails)."""

from __future__ import annotations

import pytest
import torch

from nfcli import FitConfig, load_energy
from nfcli.improper import SPREAD_SPAN, finite_ahead, improper


def checks_moving(median0, step, iqr, spans=2, loss0=20.0, fall=1.0, grow=1.0):
    """2·SPREAD_SPAN + 1 checks of one restart: the median moving by ``step`` per check, the
    interquartile range ``iqr`` growing by ``grow`` per check, the loss falling by ``fall`` per
    span (so that ``spreading`` fires)."""
    n = spans * SPREAD_SPAN + 1
    med, w = torch.tensor(median0, dtype=torch.float64), torch.tensor(iqr, dtype=torch.float64)
    grow = torch.as_tensor(grow, dtype=torch.float64)
    out = []
    for k in range(n):
        m = med + k * torch.tensor(step, dtype=torch.float64)
        width = w * grow**k
        out.append(
            {
                "step": 100 * (k + 1),
                "loss": [loss0 - fall * k / SPREAD_SPAN],
                "median": [m.tolist()],
                "iqr": [width.tolist()],
                "extent": [float((m.abs() + width).max().log())],
            }
        )
    return out


EIGHT = "benchmarks/posteriors/eight_schools_centered.py"


def test_travelling_out_of_a_neck_is_not_improper():
    """Centred eight schools from deep in the neck (ln τ = −8, every θ at μ): q's ln τ rises by
    half a unit per check while the loss falls, as a fit started there does; there is no proper
    mode to travel to, and before issue 27 this was stopped as improper."""
    energy = load_energy(EIGHT)
    start = [4.0, -8.0] + [4.0] * 8
    step = [0.0, 0.5] + [0.0] * 8
    checks = checks_moving(start, step, [0.3] * 10)
    assert improper(checks, FitConfig(), energy, torch.zeros(1, 8, 10)) == ""
    assert checks[-1].get("finite_ahead")


def test_diving_into_a_neck_is_not_improper_either():
    energy = load_energy(EIGHT)
    checks = checks_moving([4.0, -1.0] + [4.0] * 8, [0.0, -0.5] + [0.0] * 8, [0.3] * 10)
    before, now = checks[-1 - SPREAD_SPAN], checks[-1]
    assert finite_ahead(energy, before, now, 0)


@pytest.mark.parametrize(
    "expression, median, step, grow",
    [
        ("x**2/2 + z**2/2", [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1, 1.3, 1]),  # y free: spreading
        ("x**2/2 + z**2/2 - y", [0.0, 5.0, 0.0], [0.0, 2.0, 0.0], 1.0),  # an unbounded slope
        ("x**2/2 + z**2/2 + log(1 + y**2)/2", [0.0, 0.0, 0.0], [0.0] * 3, [1, 1.3, 1]),  # 1/|y|
    ],
)
def test_infinite_mass_is_still_improper(expression, median, step, grow):
    energy = load_energy(expression, ["x", "y", "z"], check_proper=False)
    checks = checks_moving(median, step, [1.0, 1.0, 1.0], grow=grow)
    assert not finite_ahead(energy, checks[-1 - SPREAD_SPAN], checks[-1], 0)
    message = improper(checks, FitConfig(), energy, torch.zeros(1, 8, 3))
    assert "improper" in message


def test_a_heavy_tail_spreading_is_not_improper():
    """Student-t (ν = 2) coordinates: q's range grows while the loss falls, the mass is finite."""
    energy = load_energy("3/2*(log(1 + x**2/2) + log(1 + y**2/2) + log(1 + z**2/2))")
    checks = checks_moving([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], grow=[1, 1.3, 1])
    assert finite_ahead(energy, checks[-1 - SPREAD_SPAN], checks[-1], 0)
