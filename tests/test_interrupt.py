"""Interruption and resume: Ctrl-C and SIGTERM keep the fit so far, kill -9 never leaves a
half-written model.pt, and --resume continues exactly as one uninterrupted run would."""

import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from clitools import assert_refused, run

from nfcli.checkpoint import load_checkpoint
from nfcli.energy import load_energy
from nfcli.train import FitConfig, TrainingState, extend, fit

FIT = [sys.executable, "-m", "nfcli", "fit"]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``nfcli fit ARGS`` in a child process, its stderr in ``log``; returns once it is fitting."""
    proc = subprocess.Popen(FIT + args, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 60
    while "fitting " not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def stop_after(count: int):
    """A ``stop`` callback that asks the fit to stop after its ``count``-th step."""
    calls = iter(range(1, 10**9))
    return lambda: next(calls) >= count


def through_checkpoint(state: TrainingState) -> TrainingState:
    """The state as it comes back from a checkpoint: plain types, loaded with weights_only."""
    buf = io.BytesIO()
    torch.save(state.to_dict(), buf)
    buf.seek(0)
    return TrainingState.from_dict(torch.load(buf, weights_only=True))


@pytest.mark.parametrize(
    "config, at",
    [
        (FitConfig(K=4, iters=300, batch=64, anneal=100, seed=3), 130),
        (FitConfig(K=4, iters=300, batch=64, anneal=100, restarts=3), 60),  # while exploring
        (FitConfig(K=4, iters=300, batch=64, anneal=100, restarts=3), 100),  # at the choice
        (FitConfig(K=3, iters=300, batch=64, anneal=0, restarts=2, flow="radial"), 150),
    ],
)
def test_a_resumed_fit_equals_one_uninterrupted_run(config, at):
    energy = load_energy("u1")
    whole = fit(energy, config)
    first = fit(energy, config, stop=stop_after(at))
    assert first.stopped == "interrupted" and first.steps == at
    rest = fit(energy, config, resume=through_checkpoint(first.state))
    assert rest.steps == whole.steps and rest.kept == whole.kept
    for name, value in whole.flow.state_dict().items():
        torch.testing.assert_close(rest.flow.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rest.loss, whole.loss, equal_nan=True)
    assert [r["restart"] for r in rest.restarts] == [r["restart"] for r in whole.restarts]


def test_extending_a_finished_fit_keeps_the_beta_schedule():
    config = FitConfig(K=4, iters=200, batch=64)  # anneal: 3/8 of the steps, 75
    longer = extend(config, 400)
    assert longer.iters == 400 and longer.anneal_steps == config.anneal_steps == 75
    energy = load_energy("u1")
    done = fit(energy, config)
    more = fit(energy, longer, resume=done.state)
    assert more.steps == 400 and torch.equal(more.loss[:200], done.loss)


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT: the resume test below
def test_a_signal_finishes_the_step_writes_everything_and_exits_130(tmp_path, sig):
    out, log = tmp_path / "run", tmp_path / "log"
    proc = start(["u1", "--K", "4", "--iters", "100000", "--batch", "64", "-o", str(out)], log)
    time.sleep(1.0)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 130, log.read_text()
    text = " ".join(log.read_text().split())
    assert f"{sig.name}: stopped after step" in text and "nfcli fit --resume" in text
    assert "Traceback" not in text
    ckpt = load_checkpoint(out / "model.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] == "interrupted" and 0 < metrics["steps_done"] < 100000
    assert ckpt.training.step == metrics["steps_done"] == len(ckpt.history["loss"])
    for name in ("samples.npy", "density.png", "layers.png", "loss.png"):
        assert (out / name).stat().st_size > 0, name


def test_resume_through_the_cli_equals_an_uninterrupted_run(tmp_path):
    args = ["u1", "--K", "4", "--iters", "1000", "--batch", "64"]
    assert run("fit", *args, "-o", tmp_path / "whole").exit_code == 0
    log = tmp_path / "log"
    proc = start([*args, "-o", str(tmp_path / "cut")], log)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()
    assert "SIGINT: stopped after step" in " ".join(log.read_text().split())
    cut = load_checkpoint(tmp_path / "cut" / "model.pt")
    assert cut.training.step < 1000
    result = run("fit", "--resume", tmp_path / "cut" / "model.pt")
    assert result.exit_code == 0, result.output
    whole, resumed = (load_checkpoint(tmp_path / d / "model.pt") for d in ("whole", "cut"))
    assert resumed.training.step == 1000
    for name, value in whole.flow.state_dict().items():
        torch.testing.assert_close(resumed.flow.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    assert resumed.report.elbo == pytest.approx(whole.report.elbo, abs=1e-5)


def test_kill_9_at_random_moments_never_leaves_a_broken_model(tmp_path):
    """A finished fit, then the same fit re-run with --force and killed at random moments, over
    the fit, the evaluation and the writing: model.pt always loads, as the old or a new file."""
    out, log = tmp_path / "run", tmp_path / "log"
    args = ["u1", "--K", "2", "--iters", "200", "--batch", "32", "-o", str(out), "--force"]
    t0 = time.monotonic()
    assert start(args, log).wait(timeout=120) == 0
    span = time.monotonic() - t0
    rng = random.Random(6)
    for _ in range(2):
        proc = subprocess.Popen(FIT + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.1) * span)
        proc.kill()
        proc.wait()
        ckpt = load_checkpoint(out / "model.pt")  # raises if half-written
        assert ckpt.training.step == 200
        json.loads((out / "metrics.json").read_text())
    assert not [p for p in out.iterdir() if p.name.startswith("model.pt")][1:]


def test_resume_refusals(tmp_path):
    out = tmp_path / "run"
    assert run("fit", "u1", "--K", "2", "--iters", "50", "--batch", "32", "-o", out).exit_code == 0
    model = out / "model.pt"
    assert_refused(run("fit", "--resume", model), "Pass --iters N with N > 50")
    assert_refused(run("fit", "--resume", model, "--iters", "40"), "asks for no more")
    assert_refused(run("fit", "--resume", model, "--K", "8"), "--K cannot be given with it")
    assert_refused(run("fit", "u2", "--resume", model, "--iters", "60"), "is not the energy")
    assert_refused(run("fit", "--resume", tmp_path / "none.pt"), "does not exist")
    result = run("fit", "--resume", model, "--iters", "80")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(model).training.step == 80


def test_resuming_a_python_file_energy_needs_the_file_or_trust(tmp_path):
    canary = tmp_path / "ran"
    path = tmp_path / "gauss.py"
    path.write_text(
        f"from pathlib import Path\nPath({str(canary)!r}).touch()\nDIM = 2\n"
        "def energy(z):\n    return (z**2).sum(-1) / 2\n"
    )
    out = tmp_path / "run"
    assert run("fit", path, "--K", "2", "--iters", "30", "--batch", "32", "-o", out).exit_code == 0
    canary.unlink()
    model = out / "model.pt"
    assert_refused(run("fit", "--resume", model, "--iters", "40"), "Pass the file again")
    assert not canary.exists()
    assert run("fit", path, "--resume", model, "--iters", "40").exit_code == 0
    assert run("fit", "--resume", model, "--iters", "50", "--trust").exit_code == 0
    path.write_text(path.read_text() + "# changed\n")
    assert_refused(run("fit", path, "--resume", model, "--iters", "60"), "has changed since")


def test_ctrl_c_in_a_conditional_fit_writes_the_fit_so_far_and_resumes(tmp_path):
    """SIGINT in ``nfcli fit EXPR --condition`` (at its default steps, CONDITIONAL_ITERS): exit
    130, the checkpoint, metrics.json and loss.png of the steps done; --resume goes on."""
    from nfcli.checkpoint import load_conditional_checkpoint
    from nfcli.train_conditional import CONDITIONAL_ITERS

    out, log = tmp_path / "rot", tmp_path / "log"
    proc = start(["(x - m)**2/2", "--condition", "m=-1:1", "--batch", "64", "-o", str(out)], log)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()
    text = " ".join(log.read_text().split())
    assert "SIGINT: stopped after step" in text and "nfcli fit --resume" in text
    assert f"of {CONDITIONAL_ITERS}" in text and "Traceback" not in text
    metrics = json.loads((out / "metrics.json").read_text())
    done = metrics["steps_done"]
    assert metrics["stopped"] == "interrupted" and metrics["iters"] == CONDITIONAL_ITERS
    assert 0 < done < CONDITIONAL_ITERS and (out / "loss.png").stat().st_size > 0
    assert load_conditional_checkpoint(out / "model.pt").training.step == done
    result = run("fit", "--resume", out / "model.pt", "--iters", done + 5)
    assert result.exit_code == 0, result.output
    assert load_conditional_checkpoint(out / "model.pt").training.step == done + 5
