"""Fitting one conditional flow q(z | c) to a family of targets p(z | c) ∝ exp(−U(z; c)).

The objective is the reverse KL of ``nfcli.train`` averaged over the conditions: each step draws
M conditions c_m uniformly from their ranges and n draws of q(·|c_m) for each, and minimises

    F_β = (1/M) Σ_m (1/n) Σ_i [ln q(z_mi | c_m) + β U(z_mi; c_m)],   z_mi ~ q(·|c_m),

whose expectation over c is E_c[KL(q(·|c) ‖ p(·|c))] − E_c[ln Z(c)] at β = 1 (amortised
variational inference: one network of c in place of one fit per c). β follows the same annealing
schedule as an unconditional fit, the learning rate the same cosine decay, Adam the same step,
and a step whose gradient is not finite is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nfcli.conditional import ConditionalFlow
from nfcli.conditions import ConditionalEnergy
from nfcli.config import FitConfig
from nfcli.train import beta_schedule, lr_factor

CONDITIONS_PER_STEP = 16  # M: conditions drawn per step (the batch is split between them)
# The hypernetwork's last weight moves every flow parameter by Σ_j ΔW_ij h_j: with Adam's
# per-weight steps of ~lr and ~64 hidden units that is many times the step an unconditional fit
# takes, and on u1_rotated (benchmarks/conditional.py, seeds 0-3) such fits lost one of U1's two
# modes over a range of θ (mean KL 0.69 at seed 2); at 0.1 × lr every seed had mean KL < 0.03;
# at 0.3, seed 2 lost the mode again; at 1/64, the fits had not converged (mean KL 0.24-0.48).
OUTPUT_LR_SCALE = 0.1


@dataclass
class ConditionalFitResult:
    """The fitted q(z | c), the settings it was fitted with, F_β and F_1 at every step."""

    flow: ConditionalFlow
    config: FitConfig
    per_step: int
    loss: Tensor  # (steps,) F_β
    loss_beta1: Tensor  # (steps,) F at β = 1 on the same draws: −(mean ELBO over c)
    seconds: float
    stopped: str | None = None  # None, or "interrupted"


def draw_conditions(energy: ConditionalEnergy, m: int, generator: torch.Generator) -> Tensor:
    """m conditions uniform in their ranges, (m, C) float64. (A Latin hypercube instead changed
    u1_rotated's worst KL by less than the seed-to-seed spread: benchmarks/conditional.py.)"""
    u = torch.rand(m, len(energy.conditions), generator=generator, dtype=torch.float64)
    return energy.lo + (energy.hi - energy.lo) * u


def fit_conditional(
    energy: ConditionalEnergy,
    config: FitConfig,
    per_step: int = CONDITIONS_PER_STEP,
    hidden: tuple[int, ...] = (64, 64),
    progress: Callable[[int, float, float, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> ConditionalFitResult:
    """Fit q(z | c) to ``energy`` with ``config`` (resolved for z's dimension; its batch is split
    into ``per_step`` conditions of batch // per_step draws each), ``hidden`` the hypernetwork's
    hidden sizes. ``progress(done, F_1, β, iters)`` every 1% of the steps; ``stop()`` after each
    step ends the fit there."""
    # from the origin: a start at p's mode would be one Gaussian for every c
    config = replace(config, start="origin").resolve(energy.dim)
    D = energy.dim
    torch.manual_seed(config.seed)
    flow = ConditionalFlow(
        D, config.architecture(D), energy.lo.tolist(), energy.hi.tolist(), hidden
    )
    n = max(config.batch // per_step, 1)
    g = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(_groups(flow, OUTPUT_LR_SCALE), lr=config.lr)
    loss_hist = torch.full((config.iters,), float("nan"))
    loss1_hist = torch.full((config.iters,), float("nan"))
    anneal, every = config.anneal_steps, max(config.iters // 100, 1)
    stopped, t, start = None, -1, time.perf_counter()
    for t in range(config.iters):
        beta = beta_schedule(t, anneal)
        for group in opt.param_groups:
            group["lr"] = group["scale"] * config.lr * lr_factor(t, config.iters, config.decay)
        c = draw_conditions(energy, per_step, g).float()
        z, log_q = flow.rsample(c, n)
        u = energy(z, c)
        finite = (u + log_q).isfinite()
        count = finite.sum().clamp(min=1)
        log_q_mean = log_q.where(finite, 0.0).sum() / count
        u_mean = u.where(finite, 0.0).sum() / count
        loss = log_q_mean + beta * u_mean
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in flow.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if bool(norm.isfinite()) and bool(finite.any()):
            opt.step()
        loss_hist[t] = loss.detach()
        loss1_hist[t] = (log_q_mean + u_mean).detach()
        if progress is not None and ((t + 1) % every == 0 or t + 1 == config.iters):
            recent = loss1_hist[max(0, t + 1 - every) : t + 1].nanmean().item()
            progress(t + 1, recent, float(beta), config.iters)
        if stop is not None and stop():
            stopped = "interrupted"
            break
    steps = t + 1
    return ConditionalFitResult(
        flow,
        replace(config),
        per_step,
        loss_hist[:steps],
        loss1_hist[:steps],
        time.perf_counter() - start,
        stopped,
    )


def _groups(flow: ConditionalFlow, output_scale: float) -> list[dict]:
    """Adam's parameter groups: the hypernetwork's last weight at ``output_scale`` × lr (see
    OUTPUT_LR_SCALE), everything else (its bias: ψ's value where the weight is zero) at lr."""
    last = flow.net[-1].weight
    rest = [p for p in flow.parameters() if p is not last]
    return [{"params": rest, "scale": 1.0}, {"params": [last], "scale": output_scale}]
