"""One conditional fit, end to end, as a library call: a family of targets U(z; c) in; the
checkpoint, metrics.json (the trust report per condition on a default grid) and loss.png out.

``nfcli fit --condition`` (or ``nfcli fit FAMILY``) is a thin layer over ``run_conditional_fit``.
What a conditional fit cannot do yet is refused by ``check_conditional_options`` in one
paragraph, before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from nfcli.checkpoint import ConditionalCheckpoint, save_conditional_checkpoint, versions
from nfcli.conditional_metrics import ConditionalReport
from nfcli.conditional_report import conditional_verdict, evaluate_at, summarise
from nfcli.conditions import Condition, ConditionalEnergy
from nfcli.config import FitConfig
from nfcli.errors import NfcliError
from nfcli.io import atomic_write
from nfcli.plots import loss_figure, save_figure
from nfcli.run import check_output, summary_metrics
from nfcli.train import Progress, Stop, beta_schedule
from nfcli.train_conditional import (
    CONDITIONS_PER_STEP,
    ConditionalTrainingState,
    fit_conditional,
    fit_conditional_restarts,
)

REPORT_DRAWS = 20_000  # draws of q(·|c) per condition of the report's grid
GRID_PER_AXIS = {1: 16, 2: 5}  # the report's grid: values per condition, by the number of them
GRID_PER_AXIS_MANY = 3  # from 3 conditions on (3^C points)


def default_grid(conditions: list[Condition]) -> Tensor:
    """The conditions the fit-time report is made at, (M, C) float64: every combination of
    n evenly spaced values per condition, ends included (n = 16 for one condition, 5 per axis
    for two, 3 per axis from three on)."""
    n = GRID_PER_AXIS.get(len(conditions), GRID_PER_AXIS_MANY)
    axes = [torch.linspace(c.lo, c.hi, n, dtype=torch.float64) for c in conditions]
    return torch.cartesian_prod(*axes).reshape(-1, len(conditions))


def check_conditional_options(config: FitConfig) -> FitConfig:
    """Refuse what a conditional fit does not support yet (one paragraph each), and return the
    config with ``converge`` and ``start`` set to what it does (every step, from the origin).
    --dtype and --device work as for a fit to one target (``fit_conditional``)."""
    unsupported = []
    if config.start == "mode":
        unsupported.append("--start mode (one Gaussian at p's mode would serve every c)")
    if config.converge:
        unsupported.append("--converge (a conditional fit runs every step of --iters)")
    if config.compile_energy == "on":
        unsupported.append("--compile-energy on (a conditional fit calls U(z; c) eager)")
    if config.compile_flow == "on":
        unsupported.append("--compile-flow on (a conditional fit runs its flow eager)")
    if unsupported:
        raise NfcliError(
            "A conditional fit (--condition, or a family of targets) does not support "
            + "; ".join(unsupported)
            + " yet. Drop "
            + ("that option" if len(unsupported) == 1 else "those options")
            + ", or fit one target at a fixed condition (bind it as a constant, e.g. "
            "nfcli fit EXPR theta=0.7) to use " + ("it." if len(unsupported) == 1 else "them.")
        )
    return replace(config, start="origin", converge=False)


def run_conditional_fit(
    energy: ConditionalEnergy,
    config: FitConfig,
    output: str | Path = ".",
    force: bool = False,
    progress: Progress | None = None,
    stop: Stop | None = None,
    per_step: int = CONDITIONS_PER_STEP,
    draws: int = REPORT_DRAWS,
    resume: ConditionalTrainingState | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ConditionalCheckpoint, ConditionalReport]:
    """Fit q(z | c) to ``energy`` on ``device`` (``fit_conditional``; ``resume``: the training
    state of a stopped or finished fit, to go on to ``config.iters`` steps), evaluate it on the
    CPU at ``default_grid`` and write model.pt (with the training state), metrics.json and
    loss.png in ``output``. A fit stopped by ``stop`` writes the same files for the steps it did,
    its report's ``stopped`` saying so."""
    config = check_conditional_options(config).resolve(energy.dim)
    config.validate(energy.dim)
    out = check_output(Path(output), force)
    scores, kept = None, None
    if config.restarts > 1 and resume is None:  # R fits to the end of annealing, the best on
        explored = fit_conditional_restarts(
            energy, config, per_step, progress=progress, stop=stop, device=device
        )
        result, scores, kept = explored.result, explored.scores, explored.kept
    else:
        result = fit_conditional(
            energy, config, per_step, progress=progress, stop=stop, resume=resume, device=device
        )
    flow = result.flow.to("cpu").eval()  # evaluated and saved on the CPU
    grid = default_grid(energy.conditions)
    points = evaluate_at(flow, energy, grid, draws, config.seed)
    steps = len(result.loss)
    metrics = summary_metrics(result.loss, result.loss_beta1, result.seconds)
    report = ConditionalReport(
        target=energy.energy.label,
        dim=energy.dim,
        vars=list(energy.names),
        conditions=list(energy.conditions),
        flow=result.config.flow,
        K=result.config.K,
        iters=result.config.iters,
        steps_done=steps,
        per_step=result.per_step,
        stopped=result.stopped,
        wall_time_s=result.seconds,
        final_loss=metrics["final_loss"],
        final_loss_beta1=metrics["final_loss_beta1"],
        draws=draws,
        points=points,
        summary=summarise(points),
        restarts=scores,
        restart_kept=kept,
    )
    beta_end = beta_schedule(steps - 1, result.config.anneal_steps)
    if beta_end < 1:
        report.warnings.append(
            f"β reached only {beta_end:.2f}: q was fitted to a flattened p"
            + (" (the fit stopped while annealing)." if result.stopped else "; lower --anneal.")
        )
    report.verdict, report.verdict_reasons = conditional_verdict(
        points, [c.name for c in energy.conditions], report.stopped, report.warnings
    )
    history = {"loss": result.loss, "loss_beta1": result.loss_beta1}
    ckpt = ConditionalCheckpoint(
        flow,
        result.config,
        result.per_step,
        dict(energy.energy.source),
        list(energy.conditions),
        history,
        report,
        versions(),
        result.state,
    )
    save_conditional_checkpoint(out / "model.pt", ckpt)
    write_conditional_metrics(out / "metrics.json", report)
    title = f"{report.target}: loss, averaged over {', '.join(report.condition_names)}"
    fig = loss_figure(result.loss, result.loss_beta1, result.config.anneal_steps, None, title)
    save_figure(fig, out / "loss.png")
    return ckpt, report


def write_conditional_metrics(path: Path, report: ConditionalReport) -> None:
    """metrics.json: ``report.to_dict()`` as indented JSON, NaN and Infinity as bare words."""
    text = json.dumps(report.to_dict(), indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
