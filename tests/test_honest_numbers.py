"""Numbers that are numbers (issue 28, item 5): where q has draws outside p's support the report
shows ∞ as ∞ with the finite part beside it, and judges the fit on q restricted to the support;
k̂'s own reading is not shown as "good" beside a worse verdict; a weighted summary's ESS never
exceeds its draws; and advice that does not fit a support boundary is not given there."""

import dataclasses
import math

import pytest
import torch
from rich.console import Console

from nfcli.cli import summary_table
from nfcli.diagnostics import EDGE_ADVICE, MODE_ADVICE, verdict
from nfcli.energy import load_energy, undefined_region
from nfcli.flows import Flow
from nfcli.report import TrustReport
from nfcli.run import evaluate
from nfcli.summary import summarise, variables_table

DIRICHLET = "-log(x) - log(y) - log(1 - x - y)"  # Dirichlet(2, 2, 2) on the simplex; Z = 1/120


def rendered(table) -> str:
    console = Console(width=220, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


@pytest.fixture(scope="module")
def simplex():
    """q = N(0, I) (an affine flow at the identity) against the Dirichlet: most of q's draws
    fall outside the simplex, where U is not finite."""
    energy = load_energy(DIRICHLET)
    flow = Flow.of(2, 1, "affine")
    with torch.no_grad():
        for p in flow.parameters():
            p.zero_()
    torch.manual_seed(0)
    r = evaluate(flow.eval(), energy, flow.sample(1000), sets=2)
    r = dataclasses.replace(r, vars=["x", "y"], target=DIRICHLET, flow="affine", K=1, dim=2)
    r = dataclasses.replace(r, iters=10, steps_done=10, wall_time_s=1.0, iters_per_s=10.0)
    r = dataclasses.replace(r, final_loss_beta1=0.0)
    r.verdict, r.verdict_reasons = verdict(r)
    return r


def test_q_outside_the_support_shows_infinity_and_the_finite_part(simplex):
    r = simplex
    f = r.outside_share
    assert 0.5 < f < 0.99 and r.elbo == -math.inf and r.quadrature.kl_qp == math.inf
    # KL from q restricted to the simplex, computed here directly with the exact ln Z
    torch.manual_seed(1)
    z = torch.randn(400_000, 2, dtype=torch.float64)
    x, y = z[:, 0], z[:, 1]
    inside = (x > 0) & (y > 0) & (x + y < 1)
    f_exact, zi = float(inside.double().mean()), z[inside]
    log_q_in = -0.5 * (zi**2).sum(1) - math.log(2 * math.pi) - math.log(f_exact)
    log_p = torch.log(zi[:, 0] * zi[:, 1] * (1 - zi.sum(1))) + math.log(120)
    kl = float((log_q_in - log_p).mean())
    assert f == pytest.approx(1 - f_exact, abs=0.01)
    assert r.kl_qp_inside == pytest.approx(kl, abs=0.05)
    shown = rendered(summary_table(r))
    assert "-inf" not in shown and "inf ±" not in shown and "inf nats" not in shown
    assert f"−∞: U is not finite at {f:.2%} of q's draws" in shown
    assert f"∞: q puts {f:.2%} of its draws where p = 0" in shown
    assert f"q restricted to p's support: {r.kl_qp_inside:.4f}" in shown
    reasons = " ".join(r.verdict_reasons)
    assert "KL(q‖p) = inf" not in reasons and "so KL(q‖p) is infinite" in reasons
    assert f"KL(q‖p) over p's support = {r.kl_qp_inside:.3f} nats" in reasons


def test_the_report_round_trips_the_finite_part(simplex):
    d = simplex.to_dict()
    assert d["elbo_inside"] == simplex.elbo_inside and math.isfinite(d["elbo_inside"])
    assert TrustReport.from_dict(d).to_dict() == d
    assert "elbo_inside" not in dataclasses.replace(simplex, elbo_inside=None).to_dict()


def test_a_fit_with_every_draw_inside_has_no_infinite_rows(simplex):
    r = dataclasses.replace(simplex, nonfinite_samples=0, elbo=-4.9, elbo_inside=None)
    r.quadrature = dataclasses.replace(r.quadrature, kl_qp=0.1)
    assert r.outside_share == 0 and r.kl_qp_inside is None
    assert "∞" not in rendered(summary_table(r))


def test_khat_alone_is_not_shown_as_good_beside_a_worse_verdict(simplex):
    """An interrupted fit showed "Pareto k̂ −0.867 (good)" beside DO NOT TRUST."""
    r = dataclasses.replace(simplex, khat=-0.867, khat_verdict="good", khat_replicates=[-0.867])
    shown = rendered(summary_table(dataclasses.replace(r, verdict="do not trust")))
    assert "-0.867 (good by k̂ alone; the verdict weighs everything)" in shown
    shown = rendered(summary_table(dataclasses.replace(r, verdict="good")))
    assert "-0.867 (good)" in shown


def test_at_a_support_boundary_the_advice_is_not_a_lost_mode(simplex):
    r = dataclasses.replace(simplex, khat_cause="mode", khat_replicates=[0.9, 0.95])
    reasons = " ".join(verdict(r)[1])
    assert EDGE_ADVICE in reasons and MODE_ADVICE not in reasons and "--restarts 8" not in reasons
    r = dataclasses.replace(r, nonfinite_samples=0)  # no draw outside: a lost mode, as before
    assert MODE_ADVICE in " ".join(verdict(r)[1])


def test_float64_is_advised_only_where_it_helps():
    """exp(x²) overflows float32 at |x| > 9.4 and not float64; a log of a negative number is
    undefined in both."""
    z = torch.tensor([[0.5, 0.2], [10.0, 0.0]])
    assert "try --dtype float64" in undefined_region(load_energy("exp(x**2) + y**2"), z)
    advice = undefined_region(load_energy(DIRICHLET), torch.tensor([[0.2, 0.3], [0.9, 0.9]]))
    assert "float64 too" in advice and "try --dtype float64" not in advice


def test_a_weighted_summary_never_claims_more_ess_than_draws():
    """Weights smallest far from the mean (w ∝ exp(−0.3 x²) on N(0, 1) draws) make the delta
    method's ratio 1.27 N; it is capped at N, with the MCSE of N draws of p."""
    torch.manual_seed(0)
    x = torch.randn(20_000, 1, dtype=torch.float64)
    s = summarise(x, ["x"], -0.3 * x[:, 0] ** 2)
    (v,) = s.variables
    assert v.ess_mean == 20_000 and v.mcse_mean == pytest.approx(v.sd / math.sqrt(20_000))
    assert "20,000" in rendered(variables_table(s)) and "25," not in rendered(variables_table(s))


# --- advice that works on a funnel (issue 28, item 6) --------------------------------------------


def test_a_usable_fit_too_narrow_in_its_tails_is_not_told_to_resample():
    """The centred eight schools got "USABLE — sample --resample corrects q's samples", and
    resampled its log τ sd was still 0.88 of the truth: where the largest weights sit at q's edge
    the advice is MCMC with the flow or a reparametrisation."""
    from nfcli.diagnostics import TAILS_USABLE_ADVICE

    r = TrustReport(
        khat=0.6, khat_replicates=[0.58, 0.62], ess_fraction=0.3, khat_cause="tails",
        tail_exponent=2.0, khat_verdict="usable",
    )  # fmt: skip
    level, reasons = verdict(r)
    text = " ".join(reasons)
    assert level == "usable" and TAILS_USABLE_ADVICE in text and "--resample" not in text
    assert "--method neutra" in text and "non-centred" in text
    level, reasons = verdict(dataclasses.replace(r, khat_cause="mode"))
    assert "sample --resample corrects q's samples." in " ".join(reasons)


# --- lines that explain themselves (issue 28, item 10) -------------------------------------------


def test_the_steps_after_convergence_are_explained(simplex):
    r = dataclasses.replace(simplex, iters=8000, steps_done=1714, converged_step=1200)
    text = " ".join(rendered(summary_table(r)).split())
    assert "1714 of at most 8000 (converged at step 1200, then 514 steps of learning-rate" in text


def test_starts_that_found_no_mode_are_explained():
    from nfcli.lost_modes import ModeSearch

    text = ModeSearch(modes=[], starts=256, outside=0, not_minima=74).describe()
    assert "74 starts stopped where U has no proper minimum" in text and "not modes" in text


def test_a_fit_to_a_python_file_says_once_what_later_commands_need(tmp_path):
    from clitools import run

    (tmp_path / "g.py").write_text("DIM = 2\ndef energy(z):\n    return 0.5 * (z**2).sum(-1)\n")
    result = run("fit", tmp_path / "g.py", "--iters", "30", "--K", "2", "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "need --trust" in text and "sample --resample" in text
    result = run("fit", "x**2/2 + y**2/2", "--iters", "30", "--K", "2", "-o", tmp_path / "e")
    assert "need --trust" not in result.output
