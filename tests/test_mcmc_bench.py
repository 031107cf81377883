"""The MCMC benchmark's truths (benchmarks/mcmc.py): its mixture targets are the normalised
mixtures they say, and the moments and nearest-centre cell masses it scores against are theirs."""

from __future__ import annotations

import importlib.util
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import multivariate_normal, norm

from nfcli.convergence import convergence
from nfcli.mcmc.chains import McmcRun, McmcSettings
from nfcli.mcmc.kernels import Chains

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
MIXTURES = ["mix4_far", "mix8_near", "mix20", "mix6_hidden"]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports its neighbours (posteriors, provenance)
    try:
        spec = importlib.util.spec_from_file_location("bench_mcmc", BENCH / "mcmc.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("bench_mcmc", None)


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_energy_is_minus_log_of_the_normalised_mixture(name: str) -> None:
    m = runpy.run_path(str(BENCH / "targets" / f"{name}.py"))
    z = np.random.default_rng(0).normal(size=(50, m["DIM"])) * 3
    p = sum(
        w * multivariate_normal(mu, m["SD"] ** 2).pdf(z)
        for w, mu in zip(m["WEIGHTS"], m["CENTRES"], strict=True)
    )
    u = m["energy"](torch.as_tensor(z)).numpy()
    np.testing.assert_allclose(u, -np.log(p) - m["LOG_Z"], rtol=1e-10)


def test_cell_masses_are_phi_of_half_the_gap_or_the_weights(bench) -> None:
    # two unit-sd components d sds apart: the nearer-centre half-space of component 1 holds
    # w₁Φ(d/2) + w₂Φ(−d/2); far-apart modes: the weights themselves
    for name, gap in (("mix8_near", 3.0), ("mix20", 5.0)):
        t = bench.TARGETS[name].truth()
        w = np.asarray(runpy.run_path(str(BENCH / "targets" / f"{name}.py"))["WEIGHTS"])
        exact = w * norm.cdf(gap / 2) + w[::-1] * norm.cdf(-gap / 2)
        np.testing.assert_allclose(t.cell_mass, exact, atol=3e-3)
    np.testing.assert_allclose(
        bench.TARGETS["mix4_far"].truth().cell_mass, [0.5, 0.3, 0.2], atol=1e-3
    )


def test_mixture_moments_match_exact_draws(bench) -> None:
    t = bench.TARGETS["mix4_far"].truth()
    rng = np.random.default_rng(1)
    k = rng.choice(3, size=200_000, p=[0.5, 0.3, 0.2])
    x = t.centres[k] + rng.standard_normal((len(k), 4))
    np.testing.assert_allclose(x.mean(0), t.mean, atol=0.03)
    np.testing.assert_allclose(x.std(0), t.sd, rtol=0.01)
    assert t.mean[3] == 0 and t.sd[3] == 1  # the coordinate no centre moves


def test_nearest_centre(bench) -> None:
    centres = np.array([[0.0, 0.0], [4.0, 0.0]])
    draws = np.array([[[1.9, 5.0], [2.1, -5.0], [-3.0, 0.0], [9.0, 1.0]]])
    assert bench.nearest_centre(draws, centres).tolist() == [[0, 1, 0, 1]]


def _row_of(bench, draws: np.ndarray):
    """The benchmark's score of chains made of the given draws (C, N, D)."""
    chains = Chains(torch.as_tensor(draws), torch.ones(len(draws)), torch.ones(len(draws)))
    names = [f"x{i}" for i in range(draws.shape[-1])]
    run = McmcRun(McmcSettings(), names, "q", chains, convergence(chains.draws, names), [], 1.0)
    row = bench.Row("mix4_far", 4, 0, 1.0, "good", "independence")
    bench.score(run, bench.TARGETS["mix4_far"].truth(), row)
    return row


def test_score_passes_exact_draws_and_fails_a_lost_mode(bench) -> None:
    t = bench.TARGETS["mix4_far"].truth()
    rng = np.random.default_rng(3)
    k = rng.choice(3, size=(4, 2000), p=[0.5, 0.3, 0.2])
    exact = _row_of(bench, t.centres[k] + rng.standard_normal((4, 2000, 4)))
    assert exact.passes and exact.z_weights < 4 and exact.rhat < 1.01
    k = rng.choice(2, size=(4, 2000), p=[0.625, 0.375])  # the 0.2 mode lost, the rest rescaled
    lost = _row_of(bench, t.centres[k] + rng.standard_normal((4, 2000, 4)))
    assert not lost.passes and lost.z_weights > 20 and lost.weights.endswith("/0.000")


def test_funnel_truth_is_analytic(bench) -> None:
    t = bench.TARGETS["funnel10"].truth()
    var_x, _ = quad(lambda v: np.exp(v) * norm.pdf(v, 0, 3), -40, 40)  # Var x = E e^v
    assert t.sd[0] == 3 and (t.mean == 0).all()
    np.testing.assert_allclose(t.sd[1:], math.sqrt(var_x), rtol=1e-8)
