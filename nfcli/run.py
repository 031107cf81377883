"""One fit, end to end, as a library call: energy in; checkpoint, samples, metrics, figures out.

``nfcli fit`` is a thin layer over ``run_fit``; the figures are ``nfcli.figures``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from nfcli.checkpoint import Checkpoint, save_checkpoint, versions
from nfcli.diagnostics import (
    KHAT_GOOD,
    LogQGrid,
    Window,
    choose_window,
    compare_on_grid,
    draw_weighted,
    importance_from_log_weights,
    khat_verdict,
    locate_large_weights,
    tail_exponent,
    verdict,
)
from nfcli.energy import Energy, undefined_region
from nfcli.errors import NfcliError
from nfcli.figures import N_SAMPLES, density_q, preset_window, write_figures
from nfcli.flows import Flow
from nfcli.improper import mass_keeps_growing
from nfcli.io import atomic_write, ensure_dir, save_samples
from nfcli.lost_modes import search_modes
from nfcli.mcmc.chains import AFTER_FIT, McmcSettings, chains_summary, draws_sampler, run_mcmc
from nfcli.mcmc.kernels import Watch
from nfcli.mixture import is_mixture
from nfcli.report import Quadrature, TrustReport
from nfcli.train import (
    FitConfig,
    Progress,
    Stop,
    TrainingState,
    beta_schedule,
    fit,
    plan,
    restart_disagreement,
)

NECK_WARNING = (
    "q kept moving (or spreading) while its loss fell, where U has no proper mode, and p's mass "
    "ahead of it falls off (nfcli.improper.finite_ahead): a funnel's neck, such as a centred "
    "hierarchy's scale going to 0, where the density grows without bound but the mass is "
    "finite. Reverse KL under-covers a neck, so q's scale-like variables are too narrow; MCMC "
    "with the flow (the draws row) corrects the draws as far as its chains mix, and writing the "
    "model non-centred (θ = μ + τ·η with η ~ N(0, 1)) removes the neck for the fit itself."
)
N_MONTE_CARLO = 100_000
N_SETS = 4  # independent sets of N_MONTE_CARLO draws: the spread of k̂, ESS and ln Z
# the quadrature window's edge mass above which p's mass is measured for growth (improper): the
# tolerance choose_window widens to
EDGE_TOL = 1e-6


def evaluate(
    flow: Flow,
    energy: Energy,
    samples: Tensor,
    seed: int = 0,
    sets: int = N_SETS,
    known: LogQGrid | None = None,
) -> TrustReport:
    """The trust report's diagnostics: ELBO and importance-sampling ln Z, ESS and k̂; in 1-D and
    2-D also ln Z by quadrature, hence KL(q‖p), and KL(p‖q) and TV via q's exact density. The
    fit's fields (target, steps, losses, restarts, verdict) are left None for ``run_fit`` to
    fill.

    The importance-sampling numbers are computed on ``sets`` independent sets of N_MONTE_CARLO
    fresh draws. The first set gives the headline fields (``khat``, ``ess_fraction``,
    ``log_z_is``, ``elbo``: the same draws as before replicates existed); ``*_replicates`` hold
    every set's value, so their spread is the Monte-Carlo noise of k̂ and ESS, which no standard
    error captures. Where k̂ is above 0.5 in some set (or ESS below 10%), ``khat_cause`` says
    whether the largest weights sit at q's edge ("tails") or inside it ("mode"), from the worst
    set, and for tails ``tail_exponent`` how fast U grows out there (U ~ rᵃ: a < 2 is heavier than
    Gaussian).

    From 3 dimensions on, where there is no quadrature, ``mode_search`` looks for modes of p that
    q lost (``nfcli.lost_modes.search_modes``, with the first set's draws).

    ``known``: ln q on density.png's grid (``nfcli.figures.density_q``), which KL(p‖q) and TV
    reuse where it holds the mass (``compare_on_grid``): not when some of the first set's draws
    fall outside it."""
    sets_ = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # set 0 is the one set drawn before replicates existed
        for _ in range(sets):
            z, log_w = draw_weighted(flow, energy, N_MONTE_CARLO)
            sets_.append((importance_from_log_weights(log_w), z, log_w))
    imp = sets_[0][0]
    khats = [s[0].khat for s in sets_]
    esses = [s[0].ess_fraction for s in sets_]
    r = TrustReport(
        elbo=imp.elbo,
        elbo_se=imp.elbo_se,
        log_z_is=imp.log_z,
        log_z_is_se=imp.log_z_se,
        ess_fraction=imp.ess_fraction,
        khat=imp.khat,
        khat_verdict=khat_verdict(imp.khat),
        monte_carlo_samples=N_MONTE_CARLO,
        nonfinite_samples=imp.nonfinite,
        replicate_sets=sets,
        khat_replicates=khats,
        ess_fraction_replicates=esses,
        log_z_is_replicates=[s[0].log_z for s in sets_],
        elbo_inside=imp.elbo_inside if imp.nonfinite else None,
    )
    notes = [s[0].note for s in sets_ if s[0].note]
    if notes:
        r.khat_note = notes[0]
    worst = max(sets_, key=lambda s: (s[0].khat, -s[0].ess_fraction))
    if (max(khats) > KHAT_GOOD or min(esses) < 0.1) and worst[0].samples > 1:
        where = locate_large_weights(worst[1], worst[2])
        r.khat_cause = where.cause
        r.large_weights_edge_share = where.edge_share
        if where.cause == "tails":
            r.tail_exponent = tail_exponent(energy, where.centre, where.far)
    r.log_z_reference = energy.log_z
    warnings = []
    if energy.dim <= 2:
        grid = choose_window(samples, energy)
        window = [list(w) for w in grid.window]
        if math.isfinite(grid.log_z) and grid.edge_mass > EDGE_TOL:
            r.improper = mass_keeps_growing(energy, grid.window) or None
        if r.improper:  # no ln Z to compare q with: none is given
            r.quadrature = Quadrature(window=window, note="the target is improper")
        elif math.isfinite(grid.log_z):
            if known is not None and not _inside(sets_[0][1], known.window):
                known = None  # q has mass (1 in 100,000 at least) outside density.png's grid
            kl_pq, tv = compare_on_grid(flow, energy, grid.window, grid.log_z, known=known)
            r.quadrature = Quadrature(
                log_z=grid.log_z,
                kl_qp=grid.log_z - imp.elbo,
                kl_qp_se=imp.elbo_se,
                kl_pq=kl_pq,
                tv=tv,
                window=window,
                edge_mass=grid.edge_mass,
            )
        else:
            note = quadrature_failure(grid.log_z, window)
            r.quadrature = Quadrature(window=window, note=note)
            warnings.append(f"ln Z by quadrature, KL and TV are not available: {note}.")
        if not r.improper and math.isfinite(grid.log_z) and grid.edge_mass > 1e-4:
            warnings.append(
                f"{grid.edge_mass:.2%} of the target's mass lies at the edge of the quadrature "
                "window even after widening it: the target may be improper (infinite mass) or "
                "far wider than the fit; ln Z and KL are then unreliable."
            )
    else:
        r.mode_search = search_modes(energy, sets_[0][1], seed=seed)
    if imp.nonfinite:
        warnings.append(
            f"U or ln q was infinite or NaN at {imp.nonfinite:,} of {N_MONTE_CARLO:,} samples of q."
        )
    r.warnings = warnings
    return r


def _inside(z: Tensor, window: Window) -> bool:
    """Whether every row of z (n, D) lies in ``window``."""
    lo = torch.tensor([a for a, _ in window], dtype=z.dtype)
    hi = torch.tensor([b for _, b in window], dtype=z.dtype)
    return bool(((z >= lo) & (z <= hi)).all())


def quadrature_failure(log_z: float, window: list[list[float]]) -> str:
    """Why grid quadrature gave a non-finite ln Z, in words."""
    (x0, x1), (y0, y1) = window
    where = f"[{x0:.3g}, {x1:.3g}] × [{y0:.3g}, {y1:.3g}]"
    if log_z == math.inf:
        return f"U is −∞ (or exp(−U) overflows) on the grid over {where}: p has no finite mass"
    return (
        f"exp(−U) is 0 or NaN at every point of the grid over {where}, which holds q's samples: "
        "p has no mass where q is (or −U underflows there), so the fit missed p entirely"
    )


def summary_metrics(result_loss: Tensor, result_loss1: Tensor, seconds: float) -> dict[str, float]:
    """The TrustReport fields of the loss: its mean over the last 1% of steps (at β and at β = 1),
    the wall time and the steps per second."""
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
    chains_progress: Callable[[int, int], None] | None = None,
) -> tuple[Checkpoint, TrustReport]:
    """Fit on ``device``, evaluate on the CPU and write model.pt, samples.npy, metrics.json and
    the figures (density, layers, loss; pairs for D > 2) as PNG. A fit that stops early (``stop``
    returned True, or ``fit`` found the loss non-finite or the target improper) writes the same
    files for the steps it did, with the report's ``stopped`` and ``stop_message`` saying why;
    model.pt always holds what ``resume`` needs to go on (``nfcli fit --resume``). ``config`` is
    resolved for the target (``FitConfig.resolve``); the checkpoint holds the resolved one.

    samples.npy holds the draws of ``config.sampler`` (``correct_draws``): q's own, or, from 3-D on
    where the verdict is not good, MCMC's with the flow (``chains_progress(done, total)`` is
    told how the chains go), summarised in the report's ``chains``."""
    config = plan(energy, config)
    config.validate(energy.dim)
    out = check_output(Path(output), force)
    result = fit(energy, config, progress, device=device, stop=stop, resume=resume)
    config = result.config  # as fitted: a start from several modes sets the annealing
    flow = result.flow.to("cpu").eval()  # evaluated, drawn and saved on the CPU
    samples = flow.sample(N_SAMPLES, torch.Generator().manual_seed(config.seed))
    # a built-in target's density.png has its window before the report: q is inverted on that
    # grid once, for the figure and (where it holds the mass) the report's KL(p‖q) and TV
    window = preset_window(energy.source) if energy.dim == 2 else None
    known = density_q(flow, window) if window is not None else None
    report = evaluate(flow, energy, samples, config.seed, known=known)
    if result.restarts:
        report.restarts = result.restarts
        report.restart_kept = result.kept
        report.restarts_log_z_spread, report.restarts_log_z_noise = restart_disagreement(
            result.restarts
        )
    beta_end = beta_schedule(result.steps - 1, config.anneal_steps)
    if beta_end < 1 and result.stopped is None:
        report.warnings.append(
            f"β reached only {beta_end:.2f} (--anneal {config.anneal_steps} is longer than "
            f"--iters {config.iters}): q was fitted to a flattened p. Lower --anneal."
        )
    elif beta_end < 1:
        report.warnings.append(
            f"the fit stopped while annealing (β = {beta_end:.2f}): q was fitted to a flattened p."
        )
    if result.state is not None and any(c.get("finite_ahead") for c in result.state.checks):
        report.warnings.append(NECK_WARNING)
    bad = {k: v for k, v in result.counts.items() if v}
    if bad:
        report.warnings.append(
            "during the fit, "
            + ", ".join(
                f"{v:,} {k.replace('_', ' ').replace('nonfinite', 'non-finite')}"
                for k, v in bad.items()
            )
            + f" (of {result.steps:,} steps × {config.batch:,} samples) were left out. "
            + (
                undefined_region(energy, samples)
                or "U was not finite everywhere q went; check the energy, or try --dtype float64."
            )
        )
    report = replace(
        report,
        target=energy.label,
        dim=energy.dim,
        vars=list(energy.names),
        K=config.K,
        flow=config.flow,
        restarts_fitted=config.restarts,
        device=str(torch.device(device)),
        threads=torch.get_num_threads(),  # CPU threads (nfcli.threads: --threads)
        dtype=config.dtype,
        iters=config.iters,
        anneal=config.anneal_steps,
        steps_done=result.steps,
        stopped=result.stopped,
        stop_message=result.message,
        counts=dict(result.counts),
        start=config.start,
        start_source=result.start.source if result.start is not None else None,
        start_elbo=result.start.elbo if result.start is not None else None,
        converged_step=result.converged,
        **summary_metrics(result.loss, result.loss_beta1, result.seconds),
        energy_share=result.energy_share,
        energy_compiled=result.energy_compiled,
        flow_compiled=result.flow_compiled,
    )
    for note in (result.energy_compiled, result.flow_compiled):
        if note is not None and "failed" in note:
            report.warnings.append(note)
    if report.improper and report.stopped is None:  # measured after the fit: it ends as one
        report.stopped = "improper"  # stopped by the fit's own check does (exit 2, no numbers)
        report.stop_message = f"The target is improper: {report.improper}"
    report.verdict, report.verdict_reasons = verdict(report)
    samples = correct_draws(flow, energy, config, report, samples, stop, chains_progress)
    history = {"loss": result.loss, "loss_beta1": result.loss_beta1}
    ckpt = Checkpoint(flow, config, energy.source, history, report, versions(), result.state)
    save_checkpoint(out / "model.pt", ckpt)
    save_samples(samples, str(out / "samples.npy"), energy.names)
    write_metrics(out / "metrics.json", report)
    write_figures(ckpt, energy, out, known=known)
    return ckpt, report


def correct_draws(
    flow: Flow,
    energy: Energy,
    config: FitConfig,
    report: TrustReport,
    samples: Tensor,
    stop: Stop | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """The draws the fit writes: q's ``samples`` (N_SAMPLES of them), or, where
    ``nfcli.mcmc.chains.draws_sampler`` says so, those of ``AFTER_FIT`` chains of MCMC with the flow
    (32 × 313 after 200 warm-up iterations), with their summary in ``report.chains``. Chains
    stopped (``stop``) before any draw was kept leave q's draws, and the report says so."""
    sampler, why = draws_sampler(
        config.sampler, energy.dim, report.verdict, report.stopped, is_mixture(flow)
    )
    report.sampler, report.sampler_reason = sampler, why
    if sampler == "q":
        return samples
    settings = McmcSettings(method=sampler, seed=config.seed, **AFTER_FIT)
    watch = Watch(progress, stop or (lambda: False))
    run = run_mcmc(energy, settings, flow, watch, energy.label, report.verdict)
    report.chains = chains_summary(run, why)
    if run.kept == 0:
        report.sampler = "q"
        report.sampler_reason = "the chains were stopped in their warm-up: q's own draws"
        return samples
    return run.chains.draws.reshape(-1, flow.dim).to(samples.dtype)


def write_metrics(path: Path, report: TrustReport) -> None:
    """metrics.json: ``report.to_dict()`` as indented JSON, with NaN and Infinity as bare words."""
    text = json.dumps(report.to_dict(), indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
