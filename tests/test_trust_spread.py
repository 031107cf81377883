"""The trust report's noise and its degenerate cases: k̂ and ESS over independent sets of draws,
one dominant weight, a quadrature that finds no mass, and advice that fits the cause of a large k̂
(tails lighter than p's, or a mode q lost)."""

import dataclasses
import math

import torch
from rich.console import Console

from nfcli.cli import summary_table
from nfcli.diagnostics import (
    importance_from_log_weights,
    khat_verdict,
    locate_large_weights,
    pareto_khat,
    tail_exponent,
    verdict,
)
from nfcli.energy import load_energy
from nfcli.flows import Flow
from nfcli.report import TrustReport
from nfcli.run import N_SETS, evaluate

GOOD = {"khat": 0.2, "kl_qp": 0.01, "ess_fraction": 0.9, "warnings": []}


def standard_flow(dim: int) -> Flow:
    """Identity layers on a standard normal base: q = N(0, I) exactly."""
    flow = Flow.of(dim, 2, "planar")
    with torch.no_grad():
        flow.transforms[0].u.zero_()
        flow.transforms[0].w.zero_()
    return flow.eval()


def report(m: dict) -> TrustReport:
    """The trust report with these metrics.json keys (the others None)."""
    return TrustReport.from_dict(m)


def rendered(r: TrustReport) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(summary_table(r))
    return console.export_text()


# --- the spread over sets of draws ---------------------------------------------------------------


def test_khat_sets_that_straddle_0_7_are_borderline_and_not_good():
    """The user's banana: k̂ 0.60–0.73 over four sets. The verdict reads the median (usable),
    says that the sets disagree, and what the set above 0.7 means."""
    m = {**GOOD, "khat": 0.40, "khat_replicates": [0.40, 0.45, 0.48, 0.73], "khat_cause": "tails"}
    level, reasons = verdict(report(m))
    assert level == "usable"  # the median is good, but one set says do not trust: not good
    assert "0.40–0.73 across 4 sets" in reasons[0] and "borderline" in reasons[0]
    assert "sit in q's tails" in reasons[0]
    m = {**GOOD, "khat": 0.60, "khat_replicates": [0.60, 0.72, 0.75, 0.73]}
    assert verdict(report(m))[0] == "do not trust"  # most sets above 0.7


def test_khat_sets_that_straddle_0_5_are_not_good():
    m = {**GOOD, "khat": 0.45, "khat_replicates": [0.45, 0.41, 0.52, 0.47]}
    level, reasons = verdict(report(m))
    assert level == "usable" and "borderline" in reasons[0]


def test_ess_sets_that_straddle_10_percent_are_borderline():
    m = {**GOOD, "khat_replicates": [0.2] * 4, "ess_fraction_replicates": [0.945, 0.6, 0.3, 0.087]}
    level, reasons = verdict(report(m))
    assert level == "usable" and "ESS 8.7%–94.5%" in reasons[0] and "borderline" in reasons[0]


def test_evaluate_reports_every_set_and_keeps_the_first_as_the_headline():
    torch.manual_seed(0)
    energy = load_energy("x**2/2 + y**2/2 + z**2/2 + 0.3*x**2*y**2")
    r = evaluate(standard_flow(3), energy, torch.zeros(10, 3), seed=5)
    assert r.replicate_sets == N_SETS >= 4
    for key in ("khat", "ess_fraction", "log_z_is"):
        values = getattr(r, f"{key}_replicates")
        assert len(values) == N_SETS and len(set(values)) == N_SETS  # independent draws
        assert getattr(r, key) == values[0]
    shown = rendered(dataclasses.replace(r, **GOOD_TABLE, verdict="good", verdict_reasons=[]))
    lo, hi = min(r.khat_replicates), max(r.khat_replicates)
    assert f"{lo:.3f} to {hi:.3f} over 4 sets of 100,000 draws" in shown


# --- degenerate weights and quadrature -----------------------------------------------------------


def test_one_weight_that_outweighs_all_others_is_not_a_good_khat():
    """psis used to read 'the largest weights are equal' (k̂ = 0, good) when all but one weight
    underflow next to the largest: that is ESS ≈ 0, the worst case, not a flat tail."""
    log_w = torch.zeros(10_000, dtype=torch.float64)
    log_w[17] = 800.0
    assert pareto_khat(log_w) == math.inf
    r = importance_from_log_weights(log_w)
    assert r.ess_fraction < 1e-3 and khat_verdict(r.khat) == "do not trust"
    assert "one draw carries 100.0% of the weight" in r.note
    # no underflow: the one weight is e^50 times the others, whose spread the fit could see
    log_w = 0.01 * torch.randn(10_000, dtype=torch.float64, generator=torch.Generator())
    log_w[3] = 50.0
    r = importance_from_log_weights(log_w)
    assert khat_verdict(r.khat) == "do not trust" and "one draw" in r.note


def test_equal_weights_up_to_float32_rounding_still_have_no_tail():
    log_w = (1.0 + 1e-7 * torch.randint(0, 3, (10_000,))).float().double()
    assert pareto_khat(log_w) == 0.0


OLD_DEGENERATE = {  # metrics as an old nfcli wrote them for a fit that missed p entirely
    "target": "t",
    "flow": "planar",
    "K": 2,
    "dim": 2,
    "vars": ["x", "y"],
    "iters": 10,
    "wall_time_s": 1.0,
    "iters_per_s": 10.0,
    "final_loss_beta1": 1.0,
    "elbo": -3.0,
    "elbo_se": 0.1,
    "log_z_is": -1.0,
    "log_z_is_se": 0.5,
    "ess_fraction": 1e-5,
    "monte_carlo_samples": 100_000,
    "khat": 0.0,
    "khat_verdict": "good",
    "log_z_quadrature": -math.inf,
    "kl_qp": -math.inf,
    "kl_qp_se": 0.1,
    "kl_pq": 0.0,
    "tv": 0.5,
    "verdict": "do not trust",
    "verdict_reasons": ["ESS is 0.00% of the samples"],
}
GOOD_TABLE = {k: OLD_DEGENERATE[k] for k in list(OLD_DEGENERATE)[:9]}


def test_summary_table_says_not_available_instead_of_fake_numbers():
    shown = rendered(report(OLD_DEGENERATE))
    assert "ln Z (quadrature)" in shown and "not available" in shown
    assert "-inf" not in shown and "0.5000" not in shown and "0.0000 nats" not in shown
    assert "(good)" not in shown  # k̂ 0.000 'good' beside ESS 0.0%
    assert "one draw carries the weight" in shown


def test_evaluate_when_p_has_no_mass_anywhere_near_q():
    """U infinite wherever q puts mass (and on the whole quadrature grid around it)."""
    energy = dataclasses.replace(
        load_energy("x**2 + y**2"), fn=lambda z: torch.full(z.shape[:1], math.inf)
    )
    flow = standard_flow(2)
    torch.manual_seed(0)
    r = evaluate(flow, energy, flow.sample(1000), sets=2)
    q = r.quadrature
    assert q.log_z is None and q.kl_pq is None and q.tv is None and q.edge_mass is None
    assert "p has no mass where q is" in q.note
    assert not math.isfinite(r.khat) and "infinite or NaN at 100,000" in r.khat_note
    r = dataclasses.replace(r, **GOOD_TABLE)
    r.verdict, r.verdict_reasons = verdict(r)
    assert r.verdict == "do not trust"
    shown = rendered(r)
    assert "not available" in shown and "0.5000" not in shown and "(good)" not in shown


# --- tails or a lost mode ------------------------------------------------------------------------


def test_weights_of_a_gaussian_q_against_a_student_t_grow_at_its_edge():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    log_w = -2 * torch.log1p(z[:, 0] ** 2 / 3) + 0.5 * z[:, 0] ** 2  # ν = 3 in x, N(0, 1) in y
    where = locate_large_weights(z, log_w)
    assert where.cause == "tails" and where.edge_share > 0.6


def test_weights_of_a_q_that_underweights_a_mode_peak_inside_it():
    """q = N(A, 1.2²) sits on mode A of p = ½N(A, 0.5²) + ½N(B, 0.5²), |A − B| = 3: the heavy
    weights sit around B, inside q's 99% radius."""
    g = torch.Generator().manual_seed(1)
    a = torch.tensor([-1.5, 0.0], dtype=torch.float64)
    z = a + 1.2 * torch.randn(20_000, 2, generator=g, dtype=torch.float64)

    def log_normal(m: torch.Tensor, s: float) -> torch.Tensor:
        return -((z - m) ** 2).sum(1) / (2 * s * s) - 2 * math.log(s)

    log_w = torch.logaddexp(log_normal(a, 0.5), log_normal(-a, 0.5)) - log_normal(a, 1.2)
    where = locate_large_weights(z, log_w)
    assert where.cause == "mode" and where.edge_share < 0.3


def test_advice_for_a_large_khat_follows_its_cause():
    heavy = {**GOOD, "khat": 4.3, "khat_cause": "tails", "tail_exponent": 0.1}
    tails = verdict(report(heavy))[1][0]
    assert "--restarts" not in tails and "--K" not in tails and "--iters" not in tails
    assert "tails are lighter than p's" in tails and "quantiles" in tails
    assert "reparametrise" in tails and "MCMC" in tails
    mode = verdict(report({**GOOD, "khat": 4.3, "khat_cause": "mode"}))[1][0]
    assert "--restarts 8" in mode and "underweights" in mode
    light = verdict(report({**heavy, "tail_exponent": 3.9}))[1][0]  # e.g. a banana: U grows like x⁴
    assert "tails are lighter than p's" in light and "a larger --K or more --iters" in light
    assert "reparametrise" not in light
    ess_tails = verdict(report({**GOOD, "ess_fraction": 0.001, "khat_cause": "tails"}))[1]
    assert not any("--restarts" in r for r in ess_tails)
    kl_tails = verdict(report({**heavy, "khat": 1.2, "kl_qp": 0.1}))[1]
    assert not any("--K help" in r for r in kl_tails)


def test_tail_exponent_tells_a_power_law_from_a_gaussian():
    g = torch.Generator().manual_seed(2)
    far = torch.randn(20, 2, generator=g, dtype=torch.float64) + torch.tensor([4.0, 0.0])
    centre = torch.zeros(2, dtype=torch.float64)
    student = tail_exponent(load_energy("2*log(1 + x**2/3) + y**2/2"), centre, far)
    gaussian = tail_exponent(load_energy("x**2/2 + y**2/2"), centre, far)
    assert student < 1.0 and abs(gaussian - 2) < 0.05
