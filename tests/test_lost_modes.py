"""Lost modes beyond 2-D: a search of U from dispersed starts finds the modes that q lost, which
importance weights cannot see, and the verdict names them; a fit that has all of p's mass stays
good; bounded, improper and saddle-shaped targets do not break the search; and the report keeps
round-tripping with and without the search."""

import json
import math
from dataclasses import replace

import pytest
import torch
from rich.console import Console

from nfcli.cli import summary_table
from nfcli.diagnostics import verdict
from nfcli.energy import load_energy
from nfcli.flows import Flow
from nfcli.lost_modes import FoundMode, ModeSearch, search_modes
from nfcli.report import TrustReport
from nfcli.run import evaluate
from nfcli.train import FitConfig, fit

CENTRES = [(0, 0, 0, 0), (10, 0, 0, 0), (0, 10, 0, 0)]  # 10 sds apart


def mixture(centres) -> str:
    """U of the equal-weight mixture of N(c, I) in 4-D, one c per centre."""
    terms = (
        "exp(-0.5*(" + "+".join(f"(x{i + 1}-({c}))**2" for i, c in enumerate(cs)) + "))"
        for cs in centres
    )
    return f"-log({' + '.join(terms)})"


def rendered(r: TrustReport) -> str:
    console = Console(width=300, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(summary_table(r))
    return console.export_text()


@pytest.fixture(scope="module")
def three_modes() -> TrustReport:
    """2 planar layers, 300 steps from the origin, on three far-apart modes in 4-D: the fit
    keeps the one at the origin (``--start origin`` makes no survey of U, so nothing puts q's
    mass on the other two), and its report as ``run_fit`` makes it."""
    energy = load_energy(mixture(CENTRES))
    result = fit(energy, FitConfig(K=2, flow="planar", iters=300, start="origin"))
    flow = result.flow.to("cpu").eval()
    r = evaluate(flow, energy, flow.sample(1000))
    r = replace(r, vars=list(energy.names), target="three modes", K=2, flow="planar", dim=4)
    r = replace(r, iters=300, steps_done=300, wall_time_s=1.0, iters_per_s=300.0)
    r = replace(r, final_loss_beta1=0.0, start=result.config.start)
    r.verdict, r.verdict_reasons = verdict(r)
    return r


def test_a_fit_that_lost_two_of_three_modes_is_do_not_trust_and_names_them(three_modes):
    r = three_modes
    # what importance weights say: nothing is wrong (the issue: "good", k̂ −0.13)
    assert max(r.khat_replicates) < 0.5 and min(r.ess_fraction_replicates) > 0.1
    search = r.mode_search
    assert len(search.modes) == 3 and search.starts == 256 and search.outside == 0
    for m in search.modes:  # each centre found, with a third of p's mass
        assert min(math.dist(m.location, c) for c in CENTRES) < 1e-4
        assert m.p_share == pytest.approx(1 / 3, abs=1e-6)
    kept = [m for m in search.modes if not m.lost]
    assert len(kept) == 1 and max(map(abs, kept[0].location)) < 1e-4 and kept[0].q_share > 0.99
    assert len(search.lost) == 2 and all(m.q_share < 0.001 for m in search.lost)
    assert r.verdict == "do not trust"
    reason = next(x for x in r.verdict_reasons if "q lost" in x)
    assert "q lost 2 of the 3 modes" in reason and "256 starts" in reason
    assert "(x1=10, x2=0, x3=0, x4=0)" in reason and "(x1=0, x2=10, x3=0, x4=0)" in reason
    assert "(x1=0, x2=0, x3=0, x4=0)" not in reason  # the kept mode is not named
    assert "33% of p's mass and 0.0% of q's draws" in reason
    # from the origin the advice is the default start, which surveys U for modes
    assert r.start == "origin" and "Try --start mode (the default), which surveys U" in reason
    _, reasons = verdict(replace(r, start="mode"))
    lost = next(x for x in reasons if "lost" in x)
    assert "the survey missed these or the fit let them go" in lost and "--iters" in lost
    assert search.seconds < 2.0  # a small fraction of even this 300-step fit
    text = rendered(r)
    assert "mode search" in text and "3 modes from 256 starts" in text and "q lost 2" in text


def test_without_the_search_the_same_report_is_good(three_modes):
    """The search is what catches it: the same report without it is the issue's "good"."""
    r = replace(three_modes, mode_search=None)
    assert verdict(r)[0] == "good"
    assert "mode search" not in rendered(replace(r, verdict="good", verdict_reasons=[]))


def test_a_flow_that_is_p_exactly_stays_good():
    """A correlated 4-D Gaussian and q = p exactly (a full affine flow set to its mean and
    Cholesky factor): one mode, q has it, and nothing spurious makes the verdict worse."""
    cov = torch.tensor(
        [[2.0, 0.9, 0.0, 0.3], [0.9, 1.0, 0.2, 0.0], [0.0, 0.2, 0.5, 0.1], [0.3, 0.0, 0.1, 3.0]]
    )
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0])
    prec = torch.linalg.inv(cov)
    d = [f"(x{i + 1} - ({float(mean[i])}))" for i in range(4)]
    U = " + ".join(f"{0.5 * float(prec[i, j])}*{d[i]}*{d[j]}" for i in range(4) for j in range(4))
    energy = load_energy(U)
    flow = Flow.of(4, 1, "affine")
    L = torch.linalg.cholesky(cov)
    with torch.no_grad():
        flow.transforms[0].shift.copy_(mean)
        flow.transforms[0].log_diag.copy_(L.diagonal().log())
        flow.transforms[0].lower.copy_(torch.tril(L, -1))
    r = evaluate(flow.eval(), energy, flow.sample(1000))
    (m,) = r.mode_search.modes
    assert torch.allclose(torch.tensor(m.location, dtype=torch.float64), mean.double(), atol=1e-5)
    assert m.p_share == 1.0 and m.q_share == 1.0 and not r.mode_search.lost
    r = replace(r, vars=list(energy.names))
    assert verdict(r) == ("good", ["k̂ < 0.5 in every set of draws."])


def test_a_q_that_covers_every_mode_loses_none():
    """Draws of p itself on two unequal modes (a quarter and three quarters of the mass, one
    twice as wide): each mode's q share is close to its p share."""
    energy = load_energy(
        "-log(0.25*exp(-0.5*((x1+4)**2+x2**2+x3**2+x4**2))"
        " + 0.75/16*exp(-0.125*((x1-4)**2+x2**2+x3**2+x4**2)))"
    )
    g = torch.Generator().manual_seed(0)
    n = 40_000
    first = torch.rand(n, generator=g) < 0.25
    z = torch.randn(n, 4, generator=g) * torch.where(first, 1.0, 2.0)[:, None]
    z[:, 0] += torch.where(first, -4.0, 4.0)
    search = search_modes(energy, z)
    assert len(search.modes) == 2 and not search.lost
    for m in search.modes:
        p = 0.25 if m.location[0] < 0 else 0.75
        assert m.p_share == pytest.approx(p, abs=0.01) and m.q_share == pytest.approx(p, abs=0.03)


def test_a_bounded_support_and_a_draw_outside_it_do_not_break_the_search():
    """U is NaN outside (0, 1)⁴ (a product of Beta(2, 3)); q's draws stray outside it. Starts
    outside are pulled back in, the search never steps out, and it finds the mode 1/3."""
    energy = load_energy(" + ".join(f"-log(x{i}) - 2*log(1 - x{i})" for i in range(1, 5)))
    z = 0.4 + 0.25 * torch.randn(20_000, 4, generator=torch.Generator().manual_seed(1))
    assert not bool(torch.isfinite(energy(z)).all())  # some draws are outside
    search = search_modes(energy, z)
    assert search.note == "" and search.outside < search.starts // 4
    (m,) = search.modes
    assert m.location == pytest.approx([1 / 3] * 4, abs=1e-5) and not m.lost


def test_flat_directions_and_saddles_are_skipped_not_modes():
    """An improper U (free in x4) has no proper mode: every start is counted as ending at none.
    A double well's saddle at x1 = 0 is no mode; its two minima are."""
    flat = load_energy("x1**2 + x2**2 + x3**2", names=["x1", "x2", "x3", "x4"], check_proper=False)
    z = torch.randn(5_000, 4, generator=torch.Generator().manual_seed(2))
    search = search_modes(flat, z)
    assert search.modes == [] and search.not_minima == search.starts and search.note == ""
    assert search.describe().startswith("0 modes from 256 starts")
    wells = load_energy("(x1**2 - 1)**2/0.1 + x2**2 + x3**2 + x4**2")
    search = search_modes(wells, z)
    assert sorted(round(m.location[0], 6) for m in search.modes) == [-1.0, 1.0]
    assert not search.lost


def test_a_mode_is_lost_only_where_p_has_enough_mass_and_q_far_less():
    def mode(p: float, q: float) -> FoundMode:
        return FoundMode([0.0], 0.0, p, q)

    assert mode(0.3, 0.029).lost and not mode(0.3, 0.031).lost  # q under a tenth of p
    assert not mode(0.019, 0.0).lost  # too little of p's mass to speak of


def test_the_report_round_trips_with_the_search_and_without_it(three_modes):
    d = json.loads(json.dumps(three_modes.to_dict(), allow_nan=True))  # as metrics.json holds it
    keys = list(d)
    assert keys.index("mode_search") == keys.index("warnings") - 1
    assert "log_z_quadrature" not in d  # 4-D: no quadrature, the search instead
    back = TrustReport.from_dict(d)
    assert isinstance(back.mode_search, ModeSearch)
    assert isinstance(back.mode_search.modes[0], FoundMode)
    assert back.mode_search.lost == three_modes.mode_search.lost
    assert back.to_dict() == d and list(back.to_dict()) == keys
    older = {k: v for k, v in d.items() if k != "mode_search"}  # a report from before the search
    r = TrustReport.from_dict(older)
    assert r.mode_search is None and r.to_dict() == older and list(r.to_dict()) == list(older)
    assert "mode search" not in rendered(r)


def test_an_energy_that_cannot_be_searched_gives_a_note_not_an_error():
    """U written for float32 only (a float32 constant): the search, in float64, cannot run; the
    report says so instead of failing a finished fit."""
    energy = load_energy("x1**2 + x2**2 + x3**2")
    energy.fn = lambda z: (z**2) @ torch.ones(3)  # float64 @ float32: a RuntimeError
    search = search_modes(energy, torch.randn(1000, 3))
    assert search.modes == [] and "could not be searched (RuntimeError" in search.note
    assert search.describe().startswith("not available: U could not be searched")
    no_draws = search_modes(energy, torch.full((10, 3), math.nan))
    assert no_draws.note == "0 of q's draws are finite" and no_draws.modes == []
