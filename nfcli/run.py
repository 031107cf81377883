"""One fit, end to end, as a library call: energy in; checkpoint, samples, metrics, figures out.

``nfcli fit`` is a thin layer over ``run_fit``; the figures are ``nfcli.figures``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nfcli.checkpoint import Checkpoint, save_checkpoint, versions
from nfcli.diagnostics import (
    choose_window,
    compare_on_grid,
    importance_from_log_weights,
    importance_log_weights,
    khat_verdict,
    verdict,
)
from nfcli.energy import Energy
from nfcli.errors import NfcliError
from nfcli.figures import N_SAMPLES, write_figures
from nfcli.flows import Flow
from nfcli.io import atomic_write, ensure_dir, save_samples
from nfcli.train import (
    FitConfig,
    Progress,
    Stop,
    TrainingState,
    beta_schedule,
    fit,
    restart_disagreement,
)

N_MONTE_CARLO = 100_000


def evaluate(flow: Flow, energy: Energy, samples: Tensor, seed: int = 0) -> dict[str, Any]:
    """The trust report: ELBO and importance-sampling ln Z, ESS and k̂ from one set of draws;
    in 2-D also ln Z by quadrature, hence KL(q‖p), and KL(p‖q) and TV via q's exact density."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        log_w = importance_log_weights(flow, energy, N_MONTE_CARLO)
    imp = importance_from_log_weights(log_w)
    m: dict[str, Any] = {
        "elbo": imp.elbo,
        "elbo_se": imp.elbo_se,
        "log_z_is": imp.log_z,
        "log_z_is_se": imp.log_z_se,
        "ess_fraction": imp.ess_fraction,
        "khat": imp.khat,
        "khat_verdict": khat_verdict(imp.khat),
        "monte_carlo_samples": N_MONTE_CARLO,
        "nonfinite_samples": imp.nonfinite,
    }
    if energy.log_z is not None:
        m["log_z_reference"] = energy.log_z
    warnings = []
    if energy.dim == 2:
        grid = choose_window(samples, energy)
        kl_pq, tv = compare_on_grid(flow, energy, grid.window, grid.log_z)
        m.update(
            log_z_quadrature=grid.log_z,
            kl_qp=grid.log_z - imp.elbo,
            kl_qp_se=m["elbo_se"],
            kl_pq=kl_pq,
            tv=tv,
            quadrature_window=[list(grid.window[0]), list(grid.window[1])],
            quadrature_edge_mass=grid.edge_mass,
        )
        if grid.edge_mass > 1e-4:
            warnings.append(
                f"{grid.edge_mass:.2%} of the target's mass lies at the edge of the quadrature "
                "window even after widening it: the target may be improper (infinite mass) or "
                "far wider than the fit; ln Z and KL are then unreliable."
            )
    if imp.nonfinite:
        warnings.append(
            f"U or ln q was infinite or NaN at {imp.nonfinite} of {N_MONTE_CARLO} samples of q."
        )
    m["warnings"] = warnings
    return m


def summary_metrics(result_loss: Tensor, result_loss1: Tensor, seconds: float) -> dict[str, Any]:
    tail = max(1, len(result_loss) // 100)
    return {
        "final_loss": result_loss[-tail:].nanmean().item(),
        "final_loss_beta1": result_loss1[-tail:].nanmean().item(),
        "wall_time_s": seconds,
        "iters_per_s": len(result_loss) / seconds if seconds > 0 else math.inf,
    }


def check_output(output: Path, force: bool) -> Path:
    """The output folder exists and is writable; refuse to overwrite model.pt unless ``force``."""
    output = ensure_dir(output)
    model = output / "model.pt"
    if model.exists() and not force:
        raise NfcliError(
            f"{model} already exists and would be overwritten. Pass --force to replace it, or "
            "choose another folder with -o/--output."
        )
    return output


def run_fit(
    energy: Energy,
    config: FitConfig,
    output: str | Path = ".",
    force: bool = False,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
    stop: Stop | None = None,
    resume: TrainingState | None = None,
) -> tuple[Checkpoint, dict[str, Any]]:
    """Fit on ``device``, evaluate on the CPU and write model.pt, samples.npy, metrics.json and
    the figures (density, layers, loss; pairs for D > 2) as PNG. A fit that stops early (``stop``
    returned True, or ``fit`` found the loss non-finite or the target improper) writes the same
    files for the steps it did, with ``metrics["stopped"]`` and ``["stop_message"]`` saying why;
    model.pt always holds what ``resume`` needs to go on (``nfcli fit --resume``)."""
    config.validate()
    out = check_output(Path(output), force)
    result = fit(energy, config, progress, device=device, stop=stop, resume=resume)
    flow = result.flow.to("cpu").eval()  # evaluated, drawn and saved on the CPU
    samples = flow.sample(N_SAMPLES, torch.Generator().manual_seed(config.seed))
    ev = evaluate(flow, energy, samples, config.seed)
    if result.restarts:
        spread, noise = restart_disagreement(result.restarts)
        ev.update(
            restarts=result.restarts,
            restart_kept=result.kept,
            restarts_log_z_spread=spread,
            restarts_log_z_noise=noise,
        )
    beta_end = beta_schedule(result.steps - 1, config.anneal_steps)
    if beta_end < 1 and result.stopped is None:
        ev["warnings"].append(
            f"β reached only {beta_end:.2f} (--anneal {config.anneal_steps} is longer than "
            f"--iters {config.iters}): q was fitted to a flattened p. Lower --anneal."
        )
    elif beta_end < 1:
        ev["warnings"].append(
            f"the fit stopped while annealing (β = {beta_end:.2f}): q was fitted to a flattened p."
        )
    bad = {k: v for k, v in result.counts.items() if v}
    if bad:
        ev["warnings"].append(
            "during the fit, "
            + ", ".join(
                f"{v:,} {k.replace('_', ' ').replace('nonfinite', 'non-finite')}"
                for k, v in bad.items()
            )
            + f" (of {result.steps:,} steps × {config.batch:,} samples) were left out: U is not "
            "finite everywhere q went; check the energy, or try --dtype float64."
        )
    metrics = {
        "target": energy.label,
        "dim": energy.dim,
        "vars": list(energy.names),
        "K": config.K,
        "flow": config.flow,
        "restarts_fitted": config.restarts,
        "device": str(torch.device(device)),
        "threads": torch.get_num_threads(),  # CPU threads (nfcli.threads: --threads)
        "dtype": config.dtype,
        "iters": config.iters,
        "steps_done": result.steps,
        "stopped": result.stopped,
        "stop_message": result.message,
        **result.counts,
        **summary_metrics(result.loss, result.loss_beta1, result.seconds),
        **ev,
    }
    metrics["verdict"], metrics["verdict_reasons"] = verdict(metrics)
    history = {"loss": result.loss, "loss_beta1": result.loss_beta1}
    ckpt = Checkpoint(flow, config, energy.source, history, metrics, versions(), result.state)
    save_checkpoint(out / "model.pt", ckpt)
    save_samples(samples, str(out / "samples.npy"), energy.names)
    write_metrics(out / "metrics.json", metrics)
    write_figures(ckpt, energy, out)
    return ckpt, metrics


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    text = json.dumps(metrics, indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
