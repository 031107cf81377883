"""One conditional fit for a family: its KL against quadrature at several conditions, the
per-condition report, and a stop."""

import io
import math
from dataclasses import replace

import pytest
import torch
from test_interrupt import stop_after

from nfcli.conditional_report import evaluate_at, summarise
from nfcli.conditions import load_conditional_energy, parse_conditions
from nfcli.config import FitConfig, extend
from nfcli.errors import NfcliError
from nfcli.train_conditional import ConditionalTrainingState, fit_conditional

FAMILY = "(x - m)**2/(2*s**2)"  # N(m, s²): ln Z = ln(s√(2π)) changes with s


def test_one_fit_matches_every_member_of_a_family():
    """q(·|m, s) against N(m, s²) at the corners and the centre of m ∈ [−2, 2], s ∈ [0.5, 2]:
    KL(q‖p) by quadrature below 0.02 nats at each, and ln Z by quadrature is the exact one."""
    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    result = fit_conditional(energy, FitConfig(K=4, iters=1500, batch=512, seed=0))
    grid = torch.tensor([[-2.0, 0.5], [2.0, 2.0], [0.0, 1.0], [-2.0, 2.0], [2.0, 0.5]])
    points = evaluate_at(result.flow, energy, grid, n=5000)
    for p in points:
        assert p.log_z_quadrature == pytest.approx(
            math.log(p.c[1] * math.sqrt(2 * math.pi)), abs=1e-3
        )
        assert p.kl_qp < 0.02, (p.c, p.kl_qp)
    s = summarise(points)
    assert s.worst_kl_qp == max(p.kl_qp for p in points) and s.points == 5
    assert result.loss.shape == (1500,) and result.stopped is None


def test_a_stop_ends_the_fit_at_that_step():
    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    result = fit_conditional(energy, FitConfig(K=2, iters=500, batch=64), stop=stop_after(37))
    assert result.stopped == "interrupted" and len(result.loss) == 37


def through_checkpoint(state: ConditionalTrainingState) -> ConditionalTrainingState:
    """The state as it comes back from a checkpoint: plain types, loaded with weights_only."""
    buf = io.BytesIO()
    torch.save(state.to_dict(), buf)
    buf.seek(0)
    return ConditionalTrainingState.from_dict(torch.load(buf, weights_only=True))


def assert_same_flow(a, b):
    for name, value in a.flow.state_dict().items():
        torch.testing.assert_close(b.flow.state_dict()[name], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_resumed_fit_equals_one_uninterrupted_run(dtype):
    """Stopped at step 70 of 200 (while annealing), then resumed from the checkpoint's state:
    the same hypernetwork, losses and random streams as one run of 200 steps."""
    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    config = FitConfig(K=2, iters=200, batch=64, dtype=dtype)
    whole = fit_conditional(energy, config)
    first = fit_conditional(energy, config, stop=stop_after(70))
    assert first.stopped == "interrupted" and first.state.step == 70
    rest = fit_conditional(energy, config, resume=through_checkpoint(first.state))
    assert rest.stopped is None and rest.state.step == 200
    assert_same_flow(whole, rest)
    torch.testing.assert_close(rest.loss, whole.loss)
    assert rest.seconds >= first.seconds
    # resumed without the random states, the steps after 70 differ: the test can tell
    lost = ConditionalTrainingState(
        **{**vars(first.state), "generator": torch.Generator().get_state()}
    )
    other = fit_conditional(energy, config, resume=through_checkpoint(lost))
    assert not torch.equal(other.loss[70:], whole.loss[70:])


def test_extending_a_finished_fit_keeps_its_first_steps_and_refuses_fewer():
    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    config = FitConfig(K=2, iters=100, batch=64)
    done = fit_conditional(energy, config)
    more = fit_conditional(energy, extend(done.config, 150), resume=done.state)
    assert more.state.step == 150 and torch.equal(more.loss[:100], done.loss)
    assert more.config.anneal_steps == done.config.anneal_steps
    with pytest.raises(NfcliError, match="has done 150 steps already"):
        fit_conditional(energy, extend(done.config, 120), resume=more.state)


def test_restarts_keep_the_best_fit_which_equals_the_one_fit_of_its_seed():
    """R = 3 fits explored to the end of annealing, compared by mean ELBO; the kept one, continued
    alone, is bit for bit the single fit of its seed (resume equals an uninterrupted run)."""
    from nfcli.train_conditional import fit_conditional_restarts

    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    config = FitConfig(K=2, iters=200, batch=64, anneal=80, seed=5)
    explored = fit_conditional_restarts(energy, replace(config, restarts=3))
    assert len(explored.scores) == 3
    assert explored.scores[explored.kept] == max(explored.scores)
    single = fit_conditional(energy, replace(config, seed=5 + explored.kept))
    assert torch.equal(single.loss, explored.result.loss)
    kept = explored.result.flow.state_dict()
    for name, value in single.flow.state_dict().items():
        assert torch.equal(value, kept[name]), name
    assert explored.result.stopped is None and explored.result.state is not None


def test_a_stop_while_restarts_explore_leaves_nothing_to_resume():
    from nfcli.train_conditional import fit_conditional_restarts

    energy = load_conditional_energy(FAMILY, parse_conditions(["m=-2:2", "s=0.5:2"]))
    config = FitConfig(K=2, iters=200, batch=64, anneal=80, restarts=3)
    explored = fit_conditional_restarts(energy, config, stop=stop_after(100))  # in restart 2
    assert explored.result.stopped == "interrupted" and explored.result.state is None
    assert explored.kept == 1 and len(explored.scores) == 1
