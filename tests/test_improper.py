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


# --- 1-D and 2-D: infinite mass measured after the fit (issue 28, item 2) -------------------------

SINE = "0.5*((y - sin(x))/0.4)**2"  # free along x: every x holds the same mass
LOG_TAILS = "0.5*x**2 + 0.5*log(1 + y**2)"  # p ∝ 1/|y| far out: infinite mass
CAUCHY = "0.5*x**2 + log(1 + y**2)"  # p ∝ 1/y² far out: proper, ln Z = ln(√(2π)·π)


@pytest.mark.parametrize(
    ("target", "window", "axis", "grew"),
    [
        (SINE, ((-2000, 2000), (-2, 2)), "x", "0.693, 0.693, 0.693"),  # ln 2: every x alike
        (LOG_TAILS, ((-5, 5), (-400, 400)), "y", "0.099, 0.090, 0.082"),  # README's numbers
    ],
)
def test_mass_that_keeps_growing_with_the_window_is_improper(target, window, axis, grew):
    from nfcli.improper import mass_keeps_growing

    why = mass_keeps_growing(load_energy(target), window)
    assert f"infinite mass along {axis}" in why and f"+ 0.01*{axis}**2" in why
    assert f"grew by {grew} nats" in why


@pytest.mark.parametrize(
    "target", [CAUCHY, "0.5*x**2 + 0.75*log(1 + y**2)", "x**2/2 + y**2/2", "log(1 + x**2 + y**2)"]
)
def test_proper_targets_heavy_tails_included_are_not_called_improper(target):
    from nfcli.improper import mass_keeps_growing

    assert mass_keeps_growing(load_energy(target), ((-400, 400), (-400, 400))) == ""


def wide_q(scale_x: float, scale_y: float):
    """An affine flow: q = N(0, diag(scale_x², scale_y²))."""
    import math

    from nfcli.flows import Flow

    flow = Flow.of(2, 1, "affine")
    with torch.no_grad():
        for p in flow.parameters():
            p.zero_()
        flow.transforms[0].log_diag.copy_(torch.tensor([math.log(scale_x), math.log(scale_y)]))
    return flow.eval()


def test_evaluate_marks_an_improper_target_and_gives_no_ln_z():
    from nfcli.run import evaluate

    torch.manual_seed(0)
    flow = wide_q(300.0, 0.4)
    r = evaluate(flow, load_energy(SINE), flow.sample(2000), sets=1)
    assert "infinite mass along x" in r.improper
    assert r.quadrature.log_z is None and r.kl_qp is None and "improper" in r.quadrature.note
    assert r.to_dict()["improper"] == r.improper


def test_evaluate_keeps_the_quadrature_of_a_proper_heavy_tail():
    import math

    from nfcli.run import evaluate

    torch.manual_seed(0)
    flow = wide_q(1.0, 30.0)
    r = evaluate(flow, load_energy(CAUCHY), flow.sample(2000), sets=1)
    assert r.improper is None and "improper" not in r.to_dict()
    # the window holds all but ~1% of a Cauchy's mass: quadrature's ln Z is that close
    exact = math.log(math.sqrt(2 * math.pi) * math.pi)
    assert r.quadrature.log_z == pytest.approx(exact, abs=0.02)


@pytest.mark.parametrize("target", [SINE, LOG_TAILS])
def test_the_fit_of_an_improper_target_exits_2_with_no_numbers(tmp_path, target):
    """The issue: both exited 0 printing ln Z 11.4067 and KL 5.15, or advising --base
    student_t. Now: exit 2, improper first and alone, and no ln Z, ELBO or KL in the table."""
    from tests.clitools import run

    result = run("fit", target, "--iters", "400", "--K", "4", "-o", tmp_path)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    table, error = text.split("error:")
    assert "improper" in error and "student_t" not in text and "--K" not in table
    for row in ("ln Z (quadrature)", "KL(q‖p)", "ln Z (importance sampling)", "ELBO "):
        assert row not in table
    assert "none: the target is improper" in table
    assert (tmp_path / "model.pt").exists()  # the fit so far, for inspection
