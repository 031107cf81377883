"""The trust report: importance-sampling ln Z, ESS and k̂, grid KL both ways, and the verdict."""

import math
from dataclasses import replace

import pytest
import torch

from nfcli.diagnostics import (
    LogQGrid,
    compare_on_grid,
    grid_points,
    importance_from_log_weights,
    importance_sampling,
    khat_verdict,
    pareto_khat,
    quadrature,
    verdict,
)
from nfcli.energy import load_energy
from nfcli.flows import Flow
from nfcli.report import Quadrature, TrustReport
from nfcli.train import choose_restart, restart_disagreement

SIGMA = (0.7, 1.3)
GAUSSIAN = f"(x - 0.5)**2/(2*{SIGMA[0]}**2) + (y + 1)**2/(2*{SIGMA[1]}**2)"
LOG_Z = math.log(2 * math.pi * SIGMA[0] * SIGMA[1])


def gaussian_flow(scale: float) -> Flow:
    """Identity layers (u = w = 0, so û = 0) on a base N(μ, (scale·σ)²)."""
    flow = Flow.of(2, 2, "planar")
    with torch.no_grad():
        flow.transforms[0].u.zero_()
        flow.transforms[0].w.zero_()
        flow.base.loc.copy_(torch.tensor([0.5, -1.0]))
        flow.base.log_scale.copy_(torch.log(torch.tensor(SIGMA) * scale))
    return flow


def test_importance_sampling_with_the_exact_q_is_exact():
    torch.manual_seed(0)
    energy = load_energy(GAUSSIAN)
    r = importance_sampling(gaussian_flow(1.0), energy, 20_000)
    assert r.log_z == pytest.approx(LOG_Z, abs=1e-5)
    assert r.ess_fraction == pytest.approx(1.0, abs=1e-6)
    assert r.khat < 0.5 and khat_verdict(r.khat) == "good"


def test_importance_sampling_log_z_against_quadrature_with_a_wider_q():
    torch.manual_seed(1)
    energy = load_energy(GAUSSIAN)
    r = importance_sampling(gaussian_flow(1.4), energy, 100_000)
    grid = quadrature(energy, ((-6.0, 7.0), (-8.0, 6.0)), n=600)
    assert grid.log_z == pytest.approx(LOG_Z, abs=1e-6)
    assert abs(r.log_z - grid.log_z) < 4 * r.log_z_se
    assert 0 < r.log_z_se < 0.01
    assert 0.3 < r.ess_fraction < 0.9
    assert r.khat < 0.5


def test_khat_flags_a_too_narrow_q():
    torch.manual_seed(2)
    r = importance_sampling(gaussian_flow(0.4), load_energy(GAUSSIAN), 20_000)
    assert r.khat > 0.7 and khat_verdict(r.khat) == "do not trust"
    assert r.ess_fraction < 0.1


def test_khat_on_known_tails():
    """Weights from N(0,1)/N(0,s²) have a Pareto tail with index 1 − s² for s < 1."""
    g = torch.Generator().manual_seed(3)
    for s, low, high in [(0.9, 0.0, 0.4), (0.5, 0.6, 0.95)]:
        x = torch.randn(20_000, generator=g, dtype=torch.float64) * s
        log_w = -0.5 * x**2 + 0.5 * (x / s) ** 2 + math.log(s)
        assert low < pareto_khat(log_w) < high, s


def test_nonfinite_weights_are_counted_not_hidden():
    log_w = torch.tensor([0.0, -1.0, math.nan, -math.inf, -0.5] * 20, dtype=torch.float64)
    r = importance_from_log_weights(log_w)
    assert r.nonfinite == 40 and r.samples == 60


def test_grid_kl_both_ways_is_zero_for_the_exact_q_and_positive_otherwise():
    energy = load_energy(GAUSSIAN)
    window = ((-6.0, 7.0), (-8.0, 6.0))
    for scale, zero in [(1.0, True), (0.8, False)]:
        kl_pq, tv = compare_on_grid(gaussian_flow(scale).double(), energy, window, LOG_Z, n=400)
        if zero:
            assert abs(kl_pq) < 1e-6 and tv < 1e-6
        else:
            # KL(p‖q) for Gaussians with σ_q = 0.8σ_p, per axis: ln 0.8 + 1/(2·0.64) − ½
            expected = 2 * (math.log(0.8) + 1 / (2 * 0.64) - 0.5)
            assert kl_pq == pytest.approx(expected, rel=1e-3)
            assert 0.05 < tv < 0.5


def counting(flow: Flow) -> list[int]:
    """Count the points at which ``flow.log_prob`` (the flow's inverse) is called from now on."""
    calls: list[int] = []
    log_prob = flow.log_prob

    def counted(y, *args, **kwargs):
        calls.append(len(y))
        return log_prob(y, *args, **kwargs)

    flow.log_prob = counted
    return calls


def test_a_known_q_grid_holding_the_mass_is_reused_and_only_the_ring_inverted():
    """ln q known on an inner window (as density.png's grid) that holds all but 1e-6 of p's and
    q's mass, with cells no wider than the report's: KL(p‖q) and TV as on the report's grid
    alone (and exact), the flow inverted only on the cells around the inner window."""
    energy = load_energy(GAUSSIAN)
    window, n = ((-6.0, 7.0), (-8.0, 6.0)), 400
    flow = gaussian_flow(0.8).double()
    inner = ((-4.5, 5.5), (-7.5, 5.5))
    known = LogQGrid(inner, n, flow.log_prob(grid_points(inner, n)).reshape(n, n))
    plain = compare_on_grid(flow, energy, window, LOG_Z, n=n)
    calls = counting(flow)
    kl_pq, tv = compare_on_grid(flow, energy, window, LOG_Z, n=n, known=known)
    ring_cells = sum(calls)
    assert 0 < ring_cells < n * n / 3
    expected = 2 * (math.log(0.8) + 1 / (2 * 0.64) - 0.5)  # as in the test above
    assert kl_pq == pytest.approx(expected, rel=1e-3) and kl_pq == pytest.approx(plain[0], abs=1e-6)
    assert tv == pytest.approx(plain[1], abs=1e-6)


@pytest.mark.parametrize(
    ("inner", "cells"),
    [(((-1.0, 2.0), (-3.0, 1.0)), 400), (((-4.5, 5.5), (-7.5, 5.5)), 100)],
    ids=["p-outside-it", "coarser"],
)
def test_a_known_q_grid_is_not_used_where_p_has_mass_around_it_or_its_cells_are_coarser(
    inner, cells
):
    energy = load_energy(GAUSSIAN)
    window, n = ((-6.0, 7.0), (-8.0, 6.0)), 400
    flow = gaussian_flow(0.8).double()
    known = LogQGrid(inner, cells, flow.log_prob(grid_points(inner, cells)).reshape(cells, cells))
    plain = compare_on_grid(flow, energy, window, LOG_Z, n=n)
    calls = counting(flow)
    assert compare_on_grid(flow, energy, window, LOG_Z, n=n, known=known) == plain
    assert sum(calls) == n * n  # p's mass in the ring is seen before q is inverted there


def test_a_known_q_grid_is_not_used_where_q_has_mass_around_it():
    """p inside the known window but a q twice as wide: q's mass in the ring (computed there)
    sends the comparison back to the report's grid."""
    energy = load_energy(GAUSSIAN)
    window, n, inner = ((-6.0, 7.0), (-8.0, 6.0)), 200, ((-4.5, 5.5), (-7.5, 5.5))
    flow = gaussian_flow(2.0).double()
    known = LogQGrid(inner, n, flow.log_prob(grid_points(inner, n)).reshape(n, n))
    plain = compare_on_grid(flow, energy, window, LOG_Z, n=n)
    calls = counting(flow)
    assert compare_on_grid(flow, energy, window, LOG_Z, n=n, known=known) == plain
    assert sum(calls) > n * n  # the ring, then the report's grid


def test_verdict_levels_and_advice():
    good = TrustReport(khat=0.2, quadrature=Quadrature(kl_qp=0.01), ess_fraction=0.9)
    assert verdict(good)[0] == "good"
    level, reasons = verdict(replace(good, khat=0.9))
    assert level == "do not trust" and "--restarts 8" in reasons[0]
    assert verdict(replace(good, khat=0.6))[0] == "usable"
    assert verdict(replace(good, quadrature=Quadrature(kl_qp=0.1)))[0] == "usable"
    assert verdict(replace(good, quadrature=Quadrature(kl_qp=0.5)))[0] == "do not trust"
    assert verdict(replace(good, warnings=["mass at the edge"]))[0] == "usable"
    lost = replace(good, restarts_log_z_spread=0.69, restarts_log_z_noise=0.01)
    level, reasons = verdict(lost)
    assert level == "usable" and "lost a mode" in reasons[0]


def test_a_planted_lost_mode_is_caught_by_restarts():
    """Two restarts on a two-mode target: one covers both modes, one only the right-hand mode.
    The one that covers both is kept, and the disagreement of their ln Z estimates (about ln 2)
    is flagged as a lost mode."""
    energy = load_energy(
        "-log(exp(-((x - 4)**2 + y**2)/(2*0.5**2)) + exp(-((x + 4)**2 + y**2)/(2*0.5**2)))"
    )
    log_z = math.log(2 * 2 * math.pi * 0.25)
    flow = Flow.of(2, 2, "planar", restarts=2)
    with torch.no_grad():
        flow.transforms[0].u.zero_()
        flow.transforms[0].w.zero_()
        flow.base.loc.copy_(torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
        flow.base.log_scale.copy_(torch.log(torch.tensor([[3.0, 1.0], [0.5, 0.5]])))
    torch.manual_seed(0)
    kept, summaries = choose_restart(flow, energy, n=50_000)
    assert kept == 0
    assert summaries[0]["log_z_is"] == pytest.approx(log_z, abs=0.05)
    assert summaries[1]["log_z_is"] == pytest.approx(log_z - math.log(2), abs=0.01)
    spread, noise = restart_disagreement(summaries)
    assert spread == pytest.approx(math.log(2), abs=0.06) and spread > noise
    level, reasons = verdict(
        TrustReport(khat=0.3, restarts_log_z_spread=spread, restarts_log_z_noise=noise)
    )
    assert level == "usable" and any("lost a mode" in r for r in reasons)
    # and when the restarts agree, nothing is flagged
    agree = [summaries[0], {**summaries[0], "restart": 1}]
    assert restart_disagreement(agree)[0] < restart_disagreement(agree)[1]
