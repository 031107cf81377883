"""FitConfig's policy (issue 13): what "auto" resolves to by dimension, the convergence stop, and
the settings a checkpoint of an older nfcli keeps."""

import math
from pathlib import Path

import pytest
import torch

from nfcli.checkpoint import load_checkpoint
from nfcli.config import AUTO_FLOW, FitConfig
from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.train import (
    CHECK_EVERY,
    CONVERGE_MIN,
    CONVERGE_TOL,
    CONVERGE_WINDOW,
    fit,
    levelled,
    lr_factor,
)

DATA = Path(__file__).parent / "data"


def test_auto_in_two_dimensions_is_the_papers_setup():
    cfg = FitConfig().resolve(2)
    assert (cfg.flow, cfg.K, cfg.start, cfg.converge) == ("planar", 32, "origin", False)
    assert cfg.anneal_steps == 3000 and cfg.base_scale == 2.0 and cfg.batch == 1024
    assert FitConfig().resolve(1).flow == "planar"


def test_auto_from_three_dimensions_starts_at_the_mode_and_stops_when_converged():
    cfg = FitConfig().resolve(3)
    assert (cfg.flow, cfg.K, cfg.start, cfg.converge) == (AUTO_FLOW, 8, "mode", True)
    assert cfg.anneal_steps == 0  # q starts at the mass: no flattened p to chase
    assert cfg.batch == 256
    assert cfg.hidden == [64, 64]


def test_what_was_set_is_kept():
    cfg = FitConfig(flow="spline", K=3, start="origin", converge=False, anneal=10).resolve(50)
    assert (cfg.flow, cfg.K, cfg.start, cfg.converge, cfg.anneal_steps) == (
        "spline", 3, "origin", False, 10,
    )  # fmt: skip
    assert FitConfig(K=16).resolve(2).K == 16


def test_a_default_fit_in_two_dimensions_is_bit_for_bit_the_papers():
    energy = load_energy("u1")
    auto = fit(energy, FitConfig(iters=60, K=4))
    paper = fit(energy, FitConfig(iters=60, K=4, flow="planar", start="origin", converge=False))
    assert torch.equal(auto.loss, paper.loss)
    assert auto.config == paper.config and auto.start is None


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("start", "sideways", "Unknown start 'sideways'"),
        ("base", "cauchy", "Unknown base 'cauchy'"),
        ("flow", "glow", "Unknown flow type 'glow'"),
    ],
)
def test_unknown_choices_are_refused(field, value, words):
    with pytest.raises(NfcliError, match=words):
        FitConfig(**{field: value}).validate(3)


def test_bins_with_flow_auto_are_refused_before_the_dimension_is_known():
    with pytest.raises(NfcliError, match="--bins 4 needs --flow spline"):
        FitConfig(bins=4).validate()


def window(values):
    return torch.tensor(values, dtype=torch.float32).unsqueeze(-1)


def test_levelled_needs_two_calm_windows_after_the_minimum():
    W = CONVERGE_WINDOW
    flat = window([1.0] * (2 * W))
    assert levelled(flat, max(CONVERGE_MIN, 2 * W))
    assert not levelled(flat, max(CONVERGE_MIN, 2 * W) - 1)  # too soon after annealing
    falling = window([1.0] * W + [1.0 - 2 * CONVERGE_TOL] * W)
    assert not levelled(falling, 10**6)
    nearly = window([1.0] * W + [1.0 - 0.5 * CONVERGE_TOL] * W)
    assert levelled(nearly, 10**6)
    two = torch.cat([flat, torch.cat([window([1.0] * W), window([0.0] * W)])], 1)[-2 * W :]
    assert not levelled(two, 10**6)  # every restart's column must have levelled off
    assert not levelled(window([math.nan] * (2 * W)), 10**6)


QUICK3 = dict(flow="realnvp", K=2, hidden=[8], batch=64, iters=6000, lr=5e-3)


def gauss3():
    return load_energy("0.5*(x**2 + (y - 3)**2/4 + z**2/9)")


@pytest.fixture(scope="module")
def converged():
    """One uninterrupted fit that converges (shared: each takes a few seconds)."""
    return fit(gauss3(), FitConfig(**QUICK3))


def test_a_converged_fit_ends_early_with_the_decay_moved_to_its_end(converged):
    result = converged
    assert result.config.converge and result.start is not None
    c = result.converged
    assert c is not None and c % CHECK_EVERY == 0 and c >= CONVERGE_MIN
    assert result.steps == min(6000, max(c + CHECK_EVERY, round(c / (1 - 0.3)))) < 6000
    assert lr_factor(result.steps - 1, result.steps, 0.3) < 1e-4  # decayed to ~0 at the end
    assert result.state.end == result.steps and result.state.converged == c


def test_a_fit_stopped_while_decaying_resumes_exactly(converged):
    whole = converged
    at = whole.converged + 2 * CHECK_EVERY + 7  # after convergence, before the end
    steps = iter(range(10**9))
    first = fit(gauss3(), FitConfig(**QUICK3), stop=lambda: next(steps) + 1 >= at)
    assert first.stopped == "interrupted" and first.steps == at
    rest = fit(gauss3(), FitConfig(**QUICK3), resume=first.state)
    assert rest.steps == whole.steps and rest.converged == whole.converged
    assert torch.equal(rest.loss, whole.loss)


def test_an_older_checkpoint_keeps_the_start_it_had():
    cfg = load_checkpoint(DATA / "format1_planar.pt").config
    assert (cfg.flow, cfg.start, cfg.converge) == ("planar", "origin", False)


def test_the_start_and_convergence_are_reported(tmp_path):
    from nfcli.run import run_fit

    _, report = run_fit(gauss3(), FitConfig(**{**QUICK3, "iters": 300}), tmp_path)
    assert report.start == "mode" and report.start_source in ("laplace", "path")
    assert report.start_elbo is not None and report.converged_step is None  # 300 < minimum
