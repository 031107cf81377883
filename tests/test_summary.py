"""The per-variable summary: its statistics on draws with known answers (plain and importance-
weighted), and ``nfcli summary``, ``nfcli report``'s table and ``nfcli --version``."""

import csv
import io
import json
import math
import platform

import numpy as np
import pytest
import torch
from clitools import assert_refused, run

from nfcli import __version__
from nfcli.errors import NfcliError
from nfcli.summary import summarise, weighted_quantiles

N = 100_000
Z = {0.05: -1.6448536, 0.25: -0.6744898, 0.5: 0.0, 0.75: 0.6744898, 0.95: 1.6448536}


def phi(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def quantiles(v):
    return {0.05: v.q05, 0.25: v.q25, 0.5: v.q50, 0.75: v.q75, 0.95: v.q95}


def test_summary_of_normal_draws_matches_their_distribution():
    """N draws of N(0,1) and N(3, 2²): each statistic within 5 of its standard errors,
    se(mean) = σ/√N, se(sd) ≈ σ/√(2N), se(Q(p)) = σ√(p(1−p)/N)/φ(z_p); the ESS is N."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    x[:, 1] += 3
    s = summarise(x, ["a", "b"])
    assert not s.weighted and s.khat is None and s.draws == N and s.dropped == 0
    assert s.ess == pytest.approx(N)
    for v, (mu, sigma) in zip(s.variables, [(0.0, 1.0), (3.0, 2.0)], strict=True):
        assert abs(v.mean - mu) < 5 * sigma / math.sqrt(N)
        assert abs(v.sd - sigma) < 5 * sigma / math.sqrt(2 * N)
        for p, q in quantiles(v).items():
            se = sigma * math.sqrt(p * (1 - p) / N) / phi(Z[p])
            assert abs(q - (mu + sigma * Z[p])) < 5 * se, (v.name, p, q)
        # plain i.i.d. draws: mcse_mean = sd/√N and the ESS of the mean is N
        assert v.mcse_mean == pytest.approx(v.sd / math.sqrt(N), rel=1e-9)
        assert v.ess_mean == pytest.approx(N, rel=1e-9)
    assert [v.name for v in s.variables] == ["a", "b"]


def test_draws_of_n01_weighted_towards_n11_summarise_n11():
    """x ~ N(0,1) with w = N(x;1,1)/N(x;0,1) = exp(x − ½) (times any constant): the weighted
    statistics are those of N(1,1). With w̄ = w/E w, the delta-method variance of the
    self-normalised mean is E_q[w̄²(x−1)²]/N = 2e/N, Kish's ESS/N → 1/E_q[w̄²] = 1/e, and a
    quantile ξ_p has variance E_q[w̄²(1{x≤ξ_p} − p)²]/(N φ(z_p)²), where E_q[w̄² g(x)] =
    e·E_{N(2,1)}[g(x)]."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, generator=g, dtype=torch.float64)
    s = summarise(x, ["x"], x[:, 0] - 0.5 + 123.0)  # the constant must not matter
    v = s.variables[0]
    assert s.weighted and s.draws == N
    mcse = math.sqrt(2 * math.e / N)
    assert abs(v.mean - 1.0) < 5 * mcse
    # the reported MCSE is the delta-method one (sd/√ESS_Kish would be √2 too small)
    assert v.mcse_mean == pytest.approx(mcse, rel=0.1)
    assert v.ess_mean == pytest.approx(v.sd**2 / v.mcse_mean**2)
    # se(s²) = √(e·E_{N(1,1)}[(y²−1)²]/N) = √(7e/N); se(s) ≈ se(s²)/2
    assert abs(v.sd - 1.0) < 5 * math.sqrt(7 * math.e / N) / 2
    # ESS/N estimates 1/e; E_q[w̄⁴] = e⁶ gives its relative standard error √((e⁶ − e²)/N)/e
    assert abs(s.ess / N - 1 / math.e) < 5 * math.sqrt((math.e**6 - math.e**2) / N) / math.e**2
    for p, q in quantiles(v).items():
        below = normal_cdf(Z[p] - 1)  # P(x ≤ ξ_p) under N(2,1), ξ_p = 1 + z_p
        var = math.e * (below * (1 - p) ** 2 + (1 - below) * p**2) / (N * phi(Z[p]) ** 2)
        assert abs(q - (1 + Z[p])) < 5 * math.sqrt(var), (p, q)
    assert s.khat is not None and s.khat < 0.5


def test_equal_weights_give_ess_n_and_the_unweighted_summary():
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    plain = summarise(x, ["u", "v"])
    weighted = summarise(x, ["u", "v"], torch.full((1000,), -7.0))
    assert weighted.weighted and weighted.ess == pytest.approx(1000, rel=1e-12)
    for a, b in zip(plain.variables, weighted.variables, strict=True):
        for key in ("mean", "sd", "mcse_mean", "ess_mean", "q05", "q25", "q50", "q75", "q95"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-12, abs=1e-12), key


def test_weighted_quantiles_interpolate_midpoints_and_skip_zero_weights():
    """c_i = (i − ½)/N for equal weights (Hazen): 0,1,2,3 have c = ⅛, ⅜, ⅝, ⅞."""
    x = torch.tensor([3.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    w = torch.full((4,), 0.25, dtype=torch.float64)
    q = weighted_quantiles(x, w, [0.05, 0.125, 0.5, 0.75, 0.95])
    assert q.tolist() == pytest.approx([0.0, 0.0, 1.5, 2.5, 3.0])
    x = torch.tensor([0.0, 1.0, 2.0, 100.0], dtype=torch.float64)
    w = torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64)
    assert weighted_quantiles(x, w, [0.5, 0.99]).tolist() == pytest.approx([1.0, 2.0])


def test_non_finite_draws_are_dropped_and_counted_and_no_weight_is_refused():
    x = torch.tensor([[0.0], [2.0], [math.nan], [4.0]], dtype=torch.float64)
    s = summarise(x, ["x"], torch.tensor([0.0, 0.0, 0.0, -math.inf]))
    assert s.draws == 3 and s.dropped == 1 and s.variables[0].mean == pytest.approx(1.0)
    with pytest.raises(NfcliError, match="importance weight"):
        summarise(x, ["x"], torch.full((4,), -math.inf))


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("summary")
    result = run("fit", "u1", "--iters", "200", "--K", "2", "-o", out)
    assert result.exit_code == 0, result.output
    return out / "model.pt"


def test_summary_command_prints_each_variable_and_the_columns(quick_fit):
    result = run("summary", quick_fit, "-n", "20000")
    assert result.exit_code == 0, result.output
    assert "of q, the fitted flow" in result.stdout and "20,000 draws" in result.stdout
    for text in ("z1", "z2", "mean", "sd", "mcse_mean", "5%", "25%", "50%", "75%", "95%"):
        assert text in result.stdout, text
    assert "ess_mean" not in result.stdout  # plain draws of q: the ESS is the number of draws


def test_summary_resample_weights_the_draws_and_shows_the_ess(quick_fit):
    result = run("summary", quick_fit, "--resample", "-n", "20000")
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())
    for text in ("of p, from draws of q weighted by p̃/q", "ESS (Kish)", "Pareto k̂", "ess_mean"):
        assert text in shown, text
    assert "z1" in shown and "z2" in shown
    data = json.loads(
        run("summary", quick_fit, "--resample", "--pool", "5000", "--format", "json").stdout
    )
    assert data["weighted"] and data["draws"] == 5000 and 0 < data["ess"] <= 5000
    assert [v["name"] for v in data["variables"]] == ["z1", "z2"]


def test_summary_csv_parses_and_its_means_are_those_of_the_same_draws(quick_fit):
    """sample and summary draw the same points for one seed, so the means agree (to the 9
    significant digits of sample's CSV)."""
    result = run("summary", quick_fit, "-n", "5000", "--seed", "3", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["name"] for r in rows] == ["z1", "z2"]
    assert set(rows[0]) >= {"mean", "sd", "mcse_mean", "ess_mean", "q05", "q50", "q95"}
    drawn = np.loadtxt(
        io.StringIO(run("sample", quick_fit, "-n", "5000", "--seed", "3", "-o", "-").stdout),
        delimiter=",",
        skiprows=1,
    )
    for j, r in enumerate(rows):
        assert float(r["mean"]) == pytest.approx(drawn[:, j].mean(), abs=1e-6)
        assert float(r["ess_mean"]) == pytest.approx(5000)
        assert float(r["q05"]) < float(r["q50"]) < float(r["q95"])


def test_report_prints_the_per_variable_summary_of_q(quick_fit):
    result = run("report", quick_fit)
    assert result.exit_code == 0, result.output
    assert "verdict" in result.stdout  # the trust report, then the summary
    assert "per-variable summary of q, the fitted flow (20,000 draws)" in result.stdout
    assert result.stdout.index("verdict") < result.stdout.index("per-variable summary")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-n", "0"], "-n 0: the number of draws must be positive"),
        (["--format", "xml"], "--format xml: not a summary format"),
        (["--pool", "1000"], "only --resample weights a pool"),
        (["--resample", "--pool", "0"], "the pool must be positive"),
    ],
)
def test_summary_refuses_bad_options(quick_fit, args, fragment):
    assert_refused(run("summary", quick_fit, *args), fragment)


def test_version_prints_nfcli_torch_and_python_versions():
    result = run("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"nfcli {__version__} (torch {torch.__version__}, python {platform.python_version()})\n"
    )


def test_no_arguments_still_show_help_listing_the_summary_command():
    result = run()
    assert "Usage" in result.output and "summary" in result.output and "--version" in result.output


def test_a_narrow_terminal_splits_the_table_and_never_cuts_a_number():
    """At 80 columns summary --resample cut numbers ("mcse_me…", "−0.7…"): a table that does
    not fit becomes two (statistics, quantiles), every cell whole."""
    from rich.console import Console

    from nfcli.summary import variables_table

    torch.manual_seed(0)
    x = torch.randn(20_000, 2, dtype=torch.float64) * torch.tensor([1000.0, 0.001]).double()
    s = summarise(x, ["a_long_variable_name", "b"], -0.1 * x[:, 0] ** 2 / 1e6)
    for width in (80, 200):
        console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(variables_table(s))
        text = console.export_text()
        assert "…" not in text and "mcse_mean" in text and "ess_mean" in text and "95%" in text
        v = s.variables[1]
        assert f"{v.q05:.6f}" in text and f"{v.sd:.6f}" in text
        assert text.count(" variable ") == (2 if width == 80 else 1)
