"""nfcli mcmc: the chains' diagnostics against known values, exactness of every kernel through the
command's library, reproducibility, interruption, the files it writes and its refusals."""

import csv
import json
import math
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from clitools import assert_refused, run
from test_interrupt import stop_after

from nfcli.checkpoint import load_checkpoint
from nfcli.convergence import convergence, worries
from nfcli.energy import load_energy
from nfcli.flows import Flow
from nfcli.mcmc.chains import McmcSettings, default_method, run_mcmc
from nfcli.mcmc.kernels import Watch

# p = N((0.5, −1), diag(0.7², 1.3²)) written out
GAUSSIAN = "(x - 0.5)**2/(2*0.7**2) + (y + 1)**2/(2*1.3**2)"
MEAN, SD = torch.tensor([0.5, -1.0]), torch.tensor([0.7, 1.3])


def ar1(rho: float, chains: int, n: int, seed: int = 0) -> torch.Tensor:
    """AR(1) chains x_t = ρ x_{t−1} + √(1 − ρ²) e_t, stationary N(0, 1): (chains, n, 1)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(chains, n, generator=g, dtype=torch.float64)
    x = torch.empty(chains, n, dtype=torch.float64)
    x[:, 0] = e[:, 0]
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * e[:, t]
    return x[..., None]


def test_ess_of_ar1_chains_matches_its_closed_form():
    """For AR(1) with coefficient ρ the ESS of the mean is N·(1 − ρ)/(1 + ρ): 4 × 5000 draws at
    ρ = 0.8 give 20000/9 ≈ 2222 (the library's estimate within 15%); independent draws give
    ≈ N; R-hat ≈ 1 for chains of one distribution."""
    chains = ar1(0.8, 4, 5000)
    (v,) = convergence(chains, ["x"])
    assert v.ess_bulk == pytest.approx(20000 / 9, rel=0.15)
    assert v.rhat < 1.01
    assert v.mcse_mean == pytest.approx(1 / math.sqrt(20000 / 9), rel=0.15)
    (iid,) = convergence(ar1(0.0, 4, 5000, seed=1), ["x"])
    assert iid.ess_bulk == pytest.approx(20000, rel=0.1)
    assert iid.ess_tail == pytest.approx(20000, rel=0.15)
    assert worries([v, iid], 4) == []


def test_rhat_sees_chains_that_disagree_and_worries_say_so():
    """Two chains of N(0, 1), two of N(1, 1): split R-hat is far above 1.01, and the words name
    the variable; a variable with too few effective draws is named too."""
    x = ar1(0.0, 4, 1000, seed=2)
    x[2:] += 1.0
    y = ar1(0.99, 4, 1000, seed=3)  # ESS ≈ 4000/199 ≈ 20
    variables = convergence(torch.cat([x, y], -1), ["a", "b"])
    assert variables[0].rhat > 1.1
    assert variables[1].ess_bulk < 100
    text = " ".join(worries(variables, 4))
    assert "R-hat ≥ 1.01 for a" in text and "ESS below 400" in text and "b" in text


def test_diagnostics_follow_the_chain_axis():
    """Chains that each sit still (a constant per chain, different across chains) but differ:
    R-hat is huge; the same numbers laid out the other way round would look mixed."""
    x = torch.arange(4, dtype=torch.float64)[:, None, None] + 0.01 * ar1(0.0, 4, 500, seed=4)
    (v,) = convergence(x, ["x"])
    assert v.rhat > 2 and v.ess_bulk < 20


def flow_too_wide() -> Flow:
    """q = N(MEAN, (1.5·SD)²): wrong on purpose, so exactness must come from the kernel."""
    flow = Flow.of(2, 2, "planar")
    with torch.no_grad():
        flow.transforms[0].u.zero_()
        flow.transforms[0].w.zero_()
        flow.base.loc.copy_(MEAN)
        flow.base.log_scale.copy_((SD * 1.5).log())
    return flow


@pytest.mark.parametrize(
    "method, draws, tol",
    [("independence", 4000, 0.06), ("neutra", 400, 0.12), ("hmc", 400, 0.12), ("rwmh", 4000, 0.12)],
)
def test_every_method_samples_p_exactly_whatever_q(method, draws, tol):
    """Means and sds of N(MEAN, SD²) from each method, with a flow that is 1.5× too wide as the
    proposal, the preconditioner or the start; R-hat below 1.05."""
    settings = McmcSettings(method, chains=4, draws=draws, warmup=150, steps=5, seed=1)
    r = run_mcmc(load_energy(GAUSSIAN), settings, flow_too_wide())
    z = r.chains.draws.reshape(-1, 2).float()
    torch.testing.assert_close(z.mean(0), MEAN, atol=tol, rtol=0)
    torch.testing.assert_close(z.std(0), SD, atol=tol, rtol=0)
    assert all(v.rhat < 1.05 for v in r.variables), r.variables
    assert r.start == "q" and r.kept == draws and not r.interrupted


def test_plain_methods_start_around_the_mode_without_a_flow():
    r = run_mcmc(load_energy(GAUSSIAN), McmcSettings("hmc", draws=300, warmup=150, steps=5))
    assert r.start == "mode" and r.settings.method == "hmc"
    z = r.chains.draws.reshape(-1, 2).float()
    torch.testing.assert_close(z.mean(0), MEAN, atol=0.15, rtol=0)


@pytest.mark.parametrize("method", ["independence", "neutra", "hmc", "rwmh"])
def test_the_same_seed_gives_the_same_chains(method):
    energy, flow = load_energy(GAUSSIAN), flow_too_wide()
    a, b, c = (
        run_mcmc(energy, McmcSettings(method, draws=30, warmup=20, steps=3, seed=s), flow)
        for s in (5, 5, 6)
    )
    assert torch.equal(a.chains.draws, b.chains.draws)
    assert not torch.equal(a.chains.draws, c.chains.draws)


@pytest.mark.parametrize("method, at", [("independence", 130), ("hmc", 70), ("hmc", 20)])
def test_a_stop_keeps_the_draws_done(method, at):
    """Stopped after iteration ``at`` of 50 warm-up + 100: the kept draws are the first
    at − 50 of an uninterrupted run's (none when stopped in the warm-up)."""
    energy, flow = load_energy(GAUSSIAN), flow_too_wide()
    settings = McmcSettings(method, draws=100, warmup=50, steps=3, seed=2)
    whole = run_mcmc(energy, settings, flow)
    cut = run_mcmc(energy, settings, flow, Watch(stop=stop_after(at)))
    kept = max(at - 50, 0)
    assert cut.interrupted and cut.kept == kept and cut.chains.warmup_done == min(at, 50)
    assert torch.equal(cut.chains.draws, whole.chains.draws[:, :kept])


@pytest.mark.parametrize(
    "has_flow, verdict, method",
    [
        (True, "good", "independence"),
        (True, "usable", "neutra"),
        (True, "do not trust", "neutra"),
        (True, None, "neutra"),  # a report without a verdict: the robust one
        (False, None, "hmc"),
    ],
)
def test_the_default_method_follows_the_fits_verdict(has_flow, verdict, method):
    """README, Exact samples: independence MH only after a good fit (elsewhere it once stuck
    with R-hat 1.000), NeuTra otherwise; asking for a method overrides the policy."""
    assert default_method(has_flow, verdict)[0] == method
    assert McmcSettings().resolve(has_flow, verdict).method == method
    assert McmcSettings("rwmh").resolve(has_flow, verdict).method == "rwmh"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    result = run("fit", GAUSSIAN, "--iters", "300", "--batch", "128", "-o", out)
    assert result.exit_code == 0, result.output
    return out / "model.pt"


def test_mcmc_writes_draws_with_a_chain_column_and_a_json_summary(model, tmp_path):
    path = tmp_path / "chains.csv"
    result = run("mcmc", model, "--chains", "3", "--draws", "200", "--warmup", "100", "-o", path)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["chain", "x", "y"] and len(rows) == 1 + 3 * 200
    assert [int(float(r[0])) for r in rows[1:]] == [c for c in range(3) for _ in range(200)]
    summary = json.loads((tmp_path / "chains.json").read_text())
    verdict = load_checkpoint(model).report.verdict
    assert summary["method"] == ("independence" if verdict == "good" else "neutra")
    assert summary["method_reason"].startswith(f"the fit's verdict is {verdict}")
    assert summary["chains"] == 3
    assert summary["kept_draws_per_chain"] == 200 and len(summary["accept"]) == 3
    assert [v["name"] for v in summary["variables"]] == ["x", "y"]
    assert {"rhat", "ess_bulk", "ess_tail", "mcse_mean"} <= set(summary["variables"][0])
    assert "R-hat" in result.output and "ESS bulk" in result.output


def test_mcmc_on_an_expression_writes_npy(tmp_path):
    path = tmp_path / "c.npy"
    args = ["mcmc", "(x-m)**2/2", "m=3", "--method", "rwmh", "--draws", "500", "-o", path]
    result = run(*args)
    assert result.exit_code == 0, result.output
    draws = np.load(path)
    assert draws.shape == (4 * 500, 2) and set(draws[:, 0]) == {0, 1, 2, 3}
    assert draws[:, 1].mean() == pytest.approx(3.0, abs=0.2)
    assert_refused(run(*args), "already exists")  # nothing replaced without --force


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["x**2/2", "--method", "neutra"], "the target given is not a model.pt"),
        (["x**2/2", "--method", "nuts"], "--method nuts: not a sampler nfcli has"),
        (["x**2/2", "--chains", "0"], "--chains 0: it must be at least 1"),
        (["x**2/2", "--warmup", "-1"], "--warmup -1: it cannot be negative"),
        (["x**2/2", "-o", "-"], "it needs a file name"),
        (["x**2/2", "-o", "c.txt"], "Cannot tell the format"),
        (["x**2/2", "--drwas", "5"], "is not one of its options"),
        (["missing.pt"], "missing.pt"),
    ],
)
def test_bad_input_is_refused_before_sampling(tmp_path, args, fragment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(run("mcmc", *args), fragment)
    assert not (tmp_path / "chains.npy").exists()


def test_a_python_file_energy_in_a_model_needs_trust(tmp_path):
    source = tmp_path / "e.py"
    source.write_text("def energy(z):\n    return (z**2).sum(-1) / 2\n\nNAMES = ['a', 'b']\n")
    assert run("fit", source, "--iters", "50", "--batch", "32", "-o", tmp_path).exit_code == 0
    assert_refused(run("mcmc", tmp_path / "model.pt", "-o", tmp_path / "c.npy"), "--trust")
    result = run(
        "mcmc", tmp_path / "model.pt", "--trust", "--draws", "20", "-o", tmp_path / "c.npy"
    )
    assert result.exit_code == 0, result.output


def test_ctrl_c_writes_the_draws_so_far_and_exits_130(tmp_path):
    """SIGINT after the chains have kept draws. On a loaded machine the start (the mode's search)
    can outlast a fixed wait, and a SIGINT then ends the run in its warm-up with nothing kept
    (tested below): such a try is repeated with a longer wait."""
    path, log = tmp_path / "c.npy", tmp_path / "log"
    cmd = [sys.executable, "-m", "nfcli", "mcmc", "x**2/2 + y**2/2", "--method", "rwmh"]
    cmd += ["--warmup", "10", "--draws", "1000000", "-o", str(path)]
    for wait in (1.0, 4.0, 10.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.monotonic() + 60
        while "sampling " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(wait)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()
        text = " ".join(log.read_text().split())
        assert "Traceback" not in text
        if "SIGINT during the warm-up" not in text:
            break
        assert not path.exists()  # nothing kept, nothing written
    assert "SIGINT: kept" in text
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["interrupted"] and 0 < summary["kept_draws_per_chain"] < 1000000
    assert np.load(path).shape == (4 * summary["kept_draws_per_chain"], 3)


def test_compare_draws_an_mcmc_column_and_keeps_its_chains(tmp_path):
    """The seed work's figure from one command: target | MH draws | flows; the chains are
    written per target, and a second run refuses to overwrite them without --reuse/--force."""
    args = ["compare", "x**4/4 - x**2", "--K", "2", "--iters", "50", "--mcmc", "rwmh"]
    result = run(*args, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "rwmh: 4 chains × 5000, R-hat" in " ".join(result.output.split())
    draws = np.load(tmp_path / "expr1" / "mcmc-rwmh.npy")
    assert draws.shape == (20000, 2)
    assert np.abs(draws[:, 1]).mean() == pytest.approx(1.170, abs=0.08)  # E|x|: mpmath.quad
    assert (tmp_path / "compare.png").stat().st_size > 0
    shutil.rmtree(tmp_path / "expr1" / "planar-K2")  # the fit gone, the chains still there
    assert_refused(run(*args, "-o", tmp_path), "mcmc-rwmh.npy already exist")
    assert_refused(run(*args[:-1], "neutra", "-o", tmp_path / "b"), "--mcmc neutra: compare")
