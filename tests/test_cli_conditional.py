"""The conditional fit from the command line (issue 16): nfcli fit --condition (and a family
name), then sample, logprob, plot and report with --at, the checkpoint's round trip, and every
refusal (exit code 2, one paragraph)."""

import json

import numpy as np
import pytest
import torch

from nfcli.checkpoint import (
    ConditionalCheckpoint,
    load_any,
    load_checkpoint,
    load_conditional_checkpoint,
    save_conditional_checkpoint,
    versions,
)
from nfcli.conditional import ConditionalFlow
from nfcli.conditional_metrics import ConditionalReport
from nfcli.conditions import Condition
from nfcli.config import FitConfig
from tests.clitools import assert_refused, run

ONE_TARGET = "tests/data/format1_planar.pt"  # a fit to one target (an old format, still read)


@pytest.fixture(scope="module")
def fit1d(tmp_path_factory):
    """N(m, 1) for m in [−1, 1], 1-D: a short conditional fit."""
    out = tmp_path_factory.mktemp("cond1d")
    r = run(
        "fit", "(x - m)**2/2", "--condition", "m=-1:1", "--iters", 800, "--batch", 256, "-o", out
    )
    assert r.exit_code == 0, r.output
    return out


def test_fit_writes_the_model_metrics_and_loss(fit1d):
    assert {p.name for p in fit1d.iterdir()} >= {"model.pt", "metrics.json", "loss.png"}
    metrics = json.loads((fit1d / "metrics.json").read_text())
    assert metrics["kind"] == "conditional"
    assert metrics["conditions"] == [{"name": "m", "lo": -1.0, "hi": 1.0}]
    assert [p["c"][0] for p in metrics["points"]] == pytest.approx(np.linspace(-1, 1, 16))
    # N(m, 1) is within a planar flow's reach: every point is close, and the summary says so
    assert max(p["kl_qp"] for p in metrics["points"]) < 0.05
    assert metrics["summary"]["worst_kl_qp"] == max(p["kl_qp"] for p in metrics["points"])
    ckpt = load_any(fit1d / "model.pt")
    assert isinstance(ckpt, ConditionalCheckpoint)
    assert ckpt.names == ("x",) and ckpt.config.iters == 800
    assert len(ckpt.history["loss"]) == 800


def test_sample_and_logprob_at_one_condition(fit1d, tmp_path):
    draws = tmp_path / "draws.npy"
    r = run("sample", fit1d / "model.pt", "-n", 4000, "--at", "m=0.5", "-o", draws)
    assert r.exit_code == 0, r.output
    z = np.load(draws)
    assert z.shape == (4000, 1)
    assert abs(z.mean() - 0.5) < 0.1 and abs(z.std() - 1) < 0.1
    logq = tmp_path / "logq.npy"
    r = run("logprob", fit1d / "model.pt", draws, "--at", "m=0.5", "-o", logq)
    assert r.exit_code == 0, r.output
    ckpt = load_conditional_checkpoint(fit1d / "model.pt")
    c = torch.tensor([[0.5]])
    expected = ckpt.flow.double().log_prob(c, torch.from_numpy(z).double()[None])[0]
    np.testing.assert_allclose(np.load(logq)[:, 0], expected.numpy(), rtol=1e-6, atol=1e-6)
    # the density of N(0.5, 1) at its draws, to within the fit's error
    exact = -0.5 * (z[:, 0] - 0.5) ** 2 - 0.5 * np.log(2 * np.pi)
    assert np.abs(np.load(logq)[:, 0] - exact).mean() < 0.05


def test_report_at_a_grid_prints_each_condition_and_the_worst(fit1d):
    r = run("report", fit1d / "model.pt", "--at", "m=-1:1:3", "-n", 2000)
    assert r.exit_code == 0, r.output
    for word in ("KL(q‖p)", "KL(p‖q)", "TV", "ESS", "mean", "worst"):
        assert word in r.output
    rows = [line for line in r.output.splitlines() if line.strip("│ ").startswith(("-1 ", "0 "))]
    assert len(rows) == 2, r.output


def test_plot_at_a_grid_writes_the_figures(fit1d, tmp_path):
    r = run("plot", fit1d / "model.pt", "--at", "m=-1:1:3", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "conditional.png").stat().st_size > 10_000
    assert (tmp_path / "kl.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("sample", "{m}"), "needs the condition: give --at with a value for each of m in [-1, 1]"),
        (("logprob", "{m}", "{m}"), "needs the condition"),
        (("report", "{m}"), "needs the condition"),
        (("plot", "{m}"), "needs the condition"),
        (
            ("sample", "{m}", "--at", "m=-1:1:3"),
            "gives 3 conditions, and nfcli sample works at one",
        ),
        (
            ("sample", "{m}", "--at", "m=2"),
            "outside the range the flow was trained on, m in [-1, 1]",
        ),
        (("report", "{m}", "--at", "m=-3:0:4"), "m in [-1, 1]"),
        (("sample", "{m}", "--at", "s=0"), "s is not a condition of this fit"),
        (("summary", "{m}"), "so nfcli summary needs the condition: give --at"),
        (("mcmc", "{m}"), "is a conditional fit"),
        (("sample", ONE_TARGET, "--at", "m=0"), "is a fit to one target, not a conditional fit"),
        (("report", ONE_TARGET, "--at", "m=0"), "Drop --at"),
        (("plot", ONE_TARGET, "--at", "m=0"), "Drop --at"),
    ],
)
def test_refusals_with_a_model(fit1d, args, fragment):
    model = str(fit1d / "model.pt")
    assert_refused(run(*(a.replace("{m}", model) for a in args)), fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--start", "mode"), "does not support --start mode"),
        (("--compile-energy", "on"), "does not support --compile-energy on"),
        (("--compile-flow", "on"), "does not support --compile-flow on"),
        (("--device", "tpu"), "--device 'tpu' is not a device"),
        (("--dtype", "half"), "--dtype 'half' is not supported"),
        (("--resume", ONE_TARGET), "--condition cannot be given with it"),
    ],
)
def test_unsupported_options_are_refused(tmp_path, args, fragment):
    r = run("fit", "(x - m)**2/2", "--condition", "m=-1:1", *args, "-o", tmp_path)
    assert_refused(r, fragment)
    assert not (tmp_path / "model.pt").exists()


def test_condition_in_the_config_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("target: (x - m)**2/2\ncondition: m=-1:1\nstart: mode\n")
    assert_refused(run("fit", "--config", cfg, "-o", tmp_path), "does not support --start mode")
    cfg.write_text("target: (x - m)**2/2\ncondition: {m: 1}\n")
    assert_refused(run("fit", "--config", cfg, "-o", tmp_path), "must be NAME=LO:HI")


def test_a_condition_the_expression_lacks_is_refused(tmp_path):
    r = run("fit", "(x - m)**2/2", "--condition", "k=0:1", "-o", tmp_path)
    assert_refused(r, "the target has no variable of that name")


def test_family_in_two_dimensions(tmp_path):
    """u1_rotated takes its condition, theta in [−π, π], by default; plot draws target | q."""
    # realnvp: its inverse (for KL(p‖q) on the quadrature grid) is cheap, unlike planar's
    fit_args = ("u1_rotated", "--flow", "realnvp", "--K", 2, "--iters", 200, "--batch", 128)
    r = run("fit", *fit_args, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    ckpt = load_conditional_checkpoint(tmp_path / "model.pt")
    assert [c.name for c in ckpt.conditions] == ["theta"] and ckpt.names == ("z1", "z2")
    assert ckpt.energy_source["name"] == "u1_rotated"
    assert len(ckpt.report.points) == 16
    assert all(p.kl_qp is not None and p.tv is not None for p in ckpt.report.points)
    r = run("plot", tmp_path / "model.pt", "--at", "theta=-1:1:2", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "conditional.png").exists() and (tmp_path / "kl.png").exists()


def test_checkpoint_round_trip(tmp_path):
    """A conditional checkpoint reloads to the same q(z | c), bit for bit, and its report."""
    torch.manual_seed(3)
    flow = ConditionalFlow(
        2, FitConfig(flow="realnvp", K=2).resolve(2).architecture(2), [-1.0], [1.0]
    )
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    conditions = [Condition("a", -1.0, 1.0)]
    report = ConditionalReport(
        "t", 2, ["x", "y"], conditions, "realnvp", 2, 10, 10, 16, None, 1.0, 0.5, 0.5, 100
    )
    source = {
        "kind": "expression",
        "text": "x**2/2 + (y - a)**2/2",
        "path": None,
        "name": None,
        "vars": ["x", "y", "a"],
    }
    ckpt = ConditionalCheckpoint(
        flow,
        FitConfig(flow="realnvp", K=2),
        16,
        source,
        conditions,
        {"loss": torch.zeros(10), "loss_beta1": torch.zeros(10)},
        report,
        versions(),
    )
    save_conditional_checkpoint(tmp_path / "model.pt", ckpt)
    back = load_conditional_checkpoint(tmp_path / "model.pt")
    c = torch.tensor([[-0.7], [0.2], [1.0]])
    y = torch.randn(3, 50, 2)
    assert torch.equal(flow.log_prob(c, y), back.flow.log_prob(c, y))
    assert back.report == report and back.conditions == conditions
    assert_refused_call(lambda: load_checkpoint(tmp_path / "model.pt"), "is a conditional fit")
    assert_refused_call(lambda: load_conditional_checkpoint(ONE_TARGET), "is a fit to one target")


def assert_refused_call(fn, fragment):
    from nfcli.errors import NfcliError

    with pytest.raises(NfcliError) as e:
        fn()
    assert fragment in str(e.value)


def test_a_stopped_fit_writes_what_it_did(tmp_path):
    """stop() (Ctrl-C in nfcli fit) ends the fit after the step; the files say how far it got."""
    from nfcli.conditions import load_conditional_energy, parse_conditions
    from nfcli.run_conditional import run_conditional_fit

    energy = load_conditional_energy("(x - m)**2/2", parse_conditions(["m=-1:1"]))
    steps = iter(range(100))
    _, report = run_conditional_fit(
        energy, FitConfig(iters=1000, batch=64), tmp_path, stop=lambda: next(steps) >= 9, draws=500
    )
    assert report.stopped == "interrupted" and report.steps_done == 10
    back = load_conditional_checkpoint(tmp_path / "model.pt")
    assert back.report.steps_done == 10 and len(back.history["loss"]) == 10
    assert "stopped while annealing" in back.report.warnings[0]


def test_a_python_file_family_fits_and_its_stored_code_needs_trust(tmp_path):
    """CONDITION = ["m", "s"] with energy(z, c): fitted with a range for each; the report at a
    condition reruns the stored file only with --trust."""
    source = tmp_path / "fam.py"
    source.write_text(
        'NAMES = ["x"]\nCONDITION = ["m", "s"]\n\n'
        "def energy(z, c):\n    return 0.5 * ((z[:, 0] - c[:, 0]) / c[:, 1]) ** 2\n"
    )
    assert_refused(run("fit", source, "-o", tmp_path / "a"), "is a family of targets")
    args = ["--condition", "m=-1:1", "--condition", "s=0.5:2", "--iters", 100, "--batch", 64]
    r = run("fit", source, *args, "-o", tmp_path / "b")
    assert r.exit_code == 0, r.output
    model = tmp_path / "b" / "model.pt"
    assert_refused(run("report", model, "--at", "m=0,s=1"), "--trust")
    r = run("report", model, "--at", "m=0,s=1", "--trust", "-n", 2000)
    assert r.exit_code == 0, r.output


def test_resume_through_the_cli_equals_an_uninterrupted_run(tmp_path):
    """A fit of 200 steps stopped after 100 (as Ctrl-C does), then nfcli fit --resume: the same
    q(z | c) and losses as one run of 200 steps; --iters 250 then extends it."""
    from nfcli.conditions import load_conditional_energy, parse_conditions
    from nfcli.run_conditional import run_conditional_fit

    args = ["(x - m)**2/2", "--condition", "m=-1:1", "--iters", 200, "--batch", 64]
    assert run("fit", *args, "-o", tmp_path / "whole").exit_code == 0
    energy = load_conditional_energy("(x - m)**2/2", parse_conditions(["m=-1:1"]))
    steps = iter(range(1, 1000))
    _, report = run_conditional_fit(
        energy, FitConfig(iters=200, batch=64), tmp_path / "cut", stop=lambda: next(steps) >= 100
    )
    assert report.stopped == "interrupted" and report.steps_done == 100
    model = tmp_path / "cut" / "model.pt"
    assert load_conditional_checkpoint(model).training.step == 100
    r = run("fit", "--resume", model)
    assert r.exit_code == 0, r.output
    whole = load_conditional_checkpoint(tmp_path / "whole" / "model.pt")
    resumed = load_conditional_checkpoint(model)
    assert resumed.training.step == 200 and resumed.config.iters == whole.config.iters
    assert resumed.config.anneal_steps == whole.config.anneal_steps  # fixed in steps by extend
    for name, value in whole.flow.state_dict().items():
        torch.testing.assert_close(resumed.flow.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(resumed.history["loss"], whole.history["loss"])
    assert resumed.report.summary == whole.report.summary
    assert_refused(run("fit", "--resume", model), "Pass --iters N with N > 200")
    assert_refused(run("fit", "--resume", model, "--K", 8), "--K cannot be given with it")
    assert_refused(run("fit", "(x - m)**2/3", "--resume", model, "--iters", 300), "not the family")
    r = run("fit", "--resume", model, "--iters", 250)
    assert r.exit_code == 0, r.output
    longer = load_conditional_checkpoint(model)
    assert longer.training.step == 250 and longer.config.iters == 250
    assert torch.equal(longer.history["loss"][:200], resumed.history["loss"])


def test_a_float64_fit_is_float64_through_the_checkpoint_and_samples(tmp_path):
    """--dtype float64: the hypernetwork is fitted, stored and reloaded in float64, and its
    samples at a condition are float64 and N(m, 1)-like."""
    args = ["(x - m)**2/2", "--condition", "m=-1:1", "--iters", 300, "--batch", 64]
    r = run("fit", *args, "--dtype", "float64", "--device", "cpu", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    ckpt = load_conditional_checkpoint(tmp_path / "model.pt")
    assert ckpt.config.dtype == "float64"
    assert all(p.dtype == torch.float64 for p in ckpt.flow.parameters())
    assert ckpt.training.flow["net.0.weight"].dtype == torch.float64
    out = tmp_path / "s.npy"
    r = run("sample", tmp_path / "model.pt", "--at", "m=0.5", "-n", 4000, "-o", out)
    assert r.exit_code == 0, r.output
    z = np.load(out)
    assert z.dtype == np.float64 and abs(z.mean() - 0.5) < 0.2


def test_restarts_keep_the_best_and_say_which(tmp_path):
    """--restarts 2: two fits to the end of annealing, the one with the higher mean ELBO goes
    on; metrics.json has both scores and the kept one, whose seed the checkpoint records."""
    args = ["--condition", "m=-1:1", "--iters", 120, "--anneal", 60, "--batch", 64]
    r = run("fit", "(x - m)**2/2", *args, "--restarts", 2, "--K", 2, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    scores, kept = metrics["restarts"], metrics["restart_kept"]
    assert len(scores) == 2 and scores[kept] == max(scores)
    ckpt = load_any(tmp_path / "model.pt")
    assert ckpt.config.seed == kept and ckpt.config.restarts == 1
    assert len(ckpt.history["loss"]) == 120


def test_plot_at_beyond_two_dimensions_draws_marginals_of_q_and_reweighted_p(tmp_path):
    r = run(
        "fit",
        "(x - m)**2/2 + (y + m)**2/2 + w**2/8",
        "--condition",
        "m=-1:1",
        "--iters",
        60,
        "--batch",
        64,
        "-o",
        tmp_path,
    )
    assert r.exit_code == 0, r.output
    r = run("plot", tmp_path / "model.pt", "--at", "m=-1:1:2", "-o", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "plots" / "conditional.png").stat().st_size > 0
    assert not (tmp_path / "plots" / "kl.png").exists()  # no quadrature above 2-D


def test_reweighted_draws_estimate_p_where_q_covers_it():
    """q = N(0, 1.5²) in 3-D, p = N((1, 0, 0), I): the weighted mean of q's draws is p's."""
    from nfcli.conditional_figures import _reweighted
    from nfcli.flows import Flow

    q = Flow.of(3, 1, "planar", base_scale=1.5).double()
    with torch.no_grad():
        q.transforms[0].u.zero_()  # the identity: q is its base
    z, w, khat = _reweighted(q, lambda x: 0.5 * ((x - torch.tensor([1.0, 0, 0])) ** 2).sum(-1), 0)
    mean = (w[:, None] * z).sum(0) / w.sum()
    torch.testing.assert_close(
        mean, torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=0.05, rtol=0
    )
    assert khat < 0.5


# --- a verdict per condition and for the fit (issue 28, item 4) ----------------------------------


def test_each_condition_and_the_fit_get_a_verdict(fit1d):
    metrics = json.loads((fit1d / "metrics.json").read_text())
    assert {p["verdict"] for p in metrics["points"]} <= {"good", "usable", "do not trust"}
    assert metrics["verdict"] in ("good", "usable", "do not trust") and metrics["verdict_reasons"]
    r = run("report", fit1d / "model.pt", "--at", "m=-1:1:3", "-n", 2000)
    assert r.exit_code == 0, r.output
    assert "verdict" in r.output and "verdict: " in " ".join(r.output.split())


def test_the_worst_condition_sets_the_verdict_and_is_named():
    """The issue: k̂ 1.10 at ρ = 0.9 with no interpretation. One bad condition out of three makes
    the fit "do not trust", at ρ = 0.9, by the single fit's rules (k̂ > 0.7)."""
    from nfcli.conditional_report import ConditionPoint, conditional_verdict

    def point(rho: float, khat: float, ess: float, kl: float) -> ConditionPoint:
        return ConditionPoint([rho], -1.0, -1.0, ess, khat, "", -1.0 + kl, kl)

    points = [
        point(-0.9, 0.2, 0.95, 0.01),
        point(0.0, 0.1, 0.98, 0.005),
        point(0.9, 1.1, 0.02, 0.4),
    ]
    verdict, reasons = conditional_verdict(points, ["rho"], None, [])
    assert verdict == "do not trust" and [p.verdict for p in points][:2] == ["good", "good"]
    assert reasons[0].startswith("do not trust at 1 of the 3 conditions; the worst, at rho=0.9:")
    assert "k̂ 1.10" in reasons[0]
    assert conditional_verdict(points[:2], ["rho"], None, []) == (
        "good",
        ["good at every one of the 2 conditions."],
    )
    verdict, reasons = conditional_verdict(points[:2], ["rho"], "interrupted", [])
    assert verdict == "usable" and "--resume" in reasons[-1]


def test_an_older_conditional_report_without_verdicts_still_loads():
    d = {
        "target": "t", "dim": 1, "vars": ["x"], "conditions": [{"name": "m", "lo": 0, "hi": 1}],
        "flow": "planar", "K": 2, "iters": 1, "steps_done": 1, "per_step": 16, "stopped": None,
        "wall_time_s": 1.0, "final_loss": 0.0, "final_loss_beta1": 0.0, "draws": 10,
        "points": [{"c": [0.0], "elbo": -1.0, "log_z_is": -1.0, "ess_fraction": 0.9,
                    "khat": 0.1, "khat_verdict": "good"}],
    }  # fmt: skip
    r = ConditionalReport.from_dict(d)
    assert r.verdict is None and r.points[0].verdict is None


def test_summary_at_a_condition(fit1d):
    """summary took no --at ("No such option: --at"): a conditional fit is summarised at one c."""
    r = run("summary", fit1d / "model.pt", "--at", "m=0.5", "-n", 20000, "--format", "json")
    assert r.exit_code == 0, r.output
    (x,) = json.loads(r.stdout)["variables"]
    assert x["mean"] == pytest.approx(0.5, abs=0.1) and x["sd"] == pytest.approx(1, abs=0.1)
    r = run("summary", fit1d / "model.pt", "--at", "m=0.5", "-n", 5000, "--resample")
    assert r.exit_code == 0, r.output
    assert "of p, from draws of q weighted" in r.output
    assert_refused(run("summary", fit1d / "model.pt"), "needs the condition: give --at")
