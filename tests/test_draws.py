"""The draws a fit writes (``FitConfig.sampler``, ``nfcli.mcmc.draws_sampler``,
``nfcli.run.correct_draws``): q's own where they can be trusted or checked, MCMC's with the flow
where the verdict is not good from 3-D on, with the chains' summary in metrics.json and the
command's table; and every refusal of a bad --sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clitools import assert_refused, run

from nfcli import FitConfig, NfcliError, load_energy
from nfcli.mcmc.chains import draws_sampler
from nfcli.run import run_fit

# Neal's funnel in 3-D: v ~ N(0, 3²), x | v ~ N(0, eᵛ); a short fit's verdict is not good
FUNNEL = "v**2/18 + (x**2 + y**2)*exp(-v)/2 + v"


@pytest.mark.parametrize(
    "asked, dim, verdict, stopped, mixture, sampler",
    [
        ("auto", 3, "good", None, False, "q"),
        ("auto", 3, "usable", None, False, "neutra"),
        ("auto", 3, "do not trust", None, False, "neutra"),
        ("auto", 3, "do not trust", None, True, "independence"),
        ("auto", 2, "do not trust", None, False, "q"),  # quadrature checks q in 2-D
        ("auto", 3, "do not trust", "interrupted", False, "q"),
        ("independence", 2, "good", None, False, "independence"),
        ("q", 5, "do not trust", None, False, "q"),
    ],
)
def test_which_draws_a_fit_writes(asked, dim, verdict, stopped, mixture, sampler):
    assert draws_sampler(asked, dim, verdict, stopped, mixture)[0] == sampler


def test_neutra_is_refused_for_a_mixture_and_an_unknown_sampler_by_name():
    with pytest.raises(NfcliError, match="mixture over several modes"):
        draws_sampler("neutra", 3, "usable", None, True)
    with pytest.raises(NfcliError, match="--sampler hmc: choose auto"):
        FitConfig(sampler="hmc").validate()


@pytest.fixture
def small_chains(monkeypatch):
    """Short chains for the tests (the real ones are 32 × (200 + 313))."""
    monkeypatch.setattr("nfcli.run.AFTER_FIT", {"chains": 4, "draws": 60, "warmup": 40})


def test_a_fit_whose_verdict_is_not_good_writes_the_chains_draws(tmp_path, small_chains):
    energy = load_energy(FUNNEL)
    config = FitConfig(iters=200, sampler="auto")
    ckpt, report = run_fit(energy, config, tmp_path)
    assert report.verdict != "good" and report.sampler == "neutra"
    chains = report.chains
    assert (chains["method"], chains["chains"], chains["draws_per_chain"]) == ("neutra", 4, 60)
    assert chains["verdict"] in ("good", "do not trust") and chains["max_rhat"] > 0.9
    draws = np.load(tmp_path / "samples.npy")
    assert draws.shape == (240, 3)
    q_draws = ckpt.flow.sample(240, torch.Generator().manual_seed(0)).numpy()
    assert not np.allclose(draws, q_draws)  # not q's
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sampler"] == "neutra" and metrics["chains"]["draws_per_chain"] == 60
    assert "MCMC corrects q's draws" in metrics["sampler_reason"]


def test_asked_for_q_the_fit_writes_q_and_no_chains(tmp_path):
    _, report = run_fit(load_energy(FUNNEL), FitConfig(iters=100, sampler="q"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert report.chains is None and metrics["sampler"] == "q" and "chains" not in metrics


def test_the_command_shows_where_the_draws_came_from(tmp_path):
    out = run("fit", FUNNEL, "--iters", "100", "--sampler", "q", "-o", str(tmp_path))
    assert out.exit_code == 0, out.output
    assert "draws (samples.npy)" in out.output and "q's own" in out.output


def test_a_bad_sampler_is_refused_with_its_choices(tmp_path):
    out = run("fit", FUNNEL, "--sampler", "nuts", "-o", str(tmp_path))
    assert_refused(out, "--sampler nuts: choose auto")
    assert not (tmp_path / "model.pt").exists()
