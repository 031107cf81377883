"""Fitting one conditional flow q(z | c) to a family of targets p(z | c) ∝ exp(−U(z; c)).

The objective is the reverse KL of ``nfcli.train`` averaged over the conditions: each step draws
M conditions c_m uniformly from their ranges and n draws of q(·|c_m) for each, and minimises

    F_β = (1/M) Σ_m (1/n) Σ_i [ln q(z_mi | c_m) + β U(z_mi; c_m)],   z_mi ~ q(·|c_m),

whose expectation over c is E_c[KL(q(·|c) ‖ p(·|c))] − E_c[ln Z(c)] at β = 1 (amortised
variational inference: one network of c in place of one fit per c). β follows the same annealing
schedule as an unconditional fit, the learning rate the same cosine decay, Adam the same step,
and a step whose gradient is not finite is skipped.

A fit runs on the CPU or a GPU in float32 or float64 (``config.dtype``); the conditions are drawn
on the CPU by their own generator and moved to the flow's device and dtype, so that a seed draws
the same conditions everywhere. ``ConditionalTrainingState`` (the step, the hypernetwork's and
Adam's states, both random states and the loss histories) lets a stopped fit go on exactly as one
uninterrupted run would (``fit_conditional(..., resume=state)``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from nfcli.conditional import ConditionalFlow
from nfcli.conditions import ConditionalEnergy
from nfcli.config import FitConfig
from nfcli.devices import resolve_dtype
from nfcli.errors import NfcliError
from nfcli.resume import PlainState, get_rng, set_rng
from nfcli.threads import Work, use_threads
from nfcli.train import beta_schedule, grad_norm, lr_factor

CONDITIONS_PER_STEP = 16  # M: conditions drawn per step (the batch is split between them)
# The hypernetwork's last weight moves every flow parameter by Σ_j ΔW_ij h_j: with Adam's
# per-weight steps of ~lr and ~64 hidden units that is many times the step an unconditional fit
# takes, and on u1_rotated (benchmarks/conditional.py, seeds 0-3) such fits lost one of U1's two
# modes over a range of θ (mean KL 0.69 at seed 2); at 0.1 × lr every seed had mean KL < 0.03;
# at 0.3, seed 2 lost the mode again; at 1/64, the fits had not converged (mean KL 0.24-0.48).
OUTPUT_LR_SCALE = 0.1
# A conditional fit's steps when --iters is not given: twice an unconditional fit's. One network
# serves every c, and each step gives each c a 16th of the draws; on u1_rotated
# (benchmarks/conditional.py, seeds 0-5) 8,000 steps left the worst of 16 angles at 0.035-0.107
# nats (0.088-0.107 at 2 of 6 seeds), 16,000 at 0.018-0.037 (every seed), in about 2.2× the
# time of one unconditional fit. A wider hypernetwork (128, 128) or more draws at the ends of the
# range did not fix the worst angle across seeds.
CONDITIONAL_ITERS = 2 * FitConfig.iters


def default_config(**settings: Any) -> FitConfig:
    """The FitConfig of a conditional fit: ``settings`` over FitConfig's defaults, with
    CONDITIONAL_ITERS steps unless ``iters`` is among them."""
    return FitConfig(**{"iters": CONDITIONAL_ITERS, **settings})


@dataclass
class ConditionalTrainingState(PlainState):
    """Everything a conditional fit needs to go on exactly where it stopped (saved in its
    checkpoint): ``fit_conditional(..., resume=state)`` with the same config, or the config
    ``nfcli.config.extend``-ed to more steps, continues as if it had never stopped."""

    step: int  # steps done
    flow: dict[str, Tensor]  # ConditionalFlow.state_dict(): the hypernetwork and fixed buffers
    optimizer: dict[str, Any]  # Adam's state_dict: moments, step counts, the groups' lr scales
    generator: Tensor  # the condition generator's state (a CPU torch.Generator)
    rng: dict[str, Tensor]  # torch's global random state: "cpu", and "cuda" on a GPU
    loss: Tensor  # (step,) F_β per step
    loss_beta1: Tensor  # (step,) F at β = 1
    seconds: float  # the optimisation's wall time so far, all sessions


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
    state: ConditionalTrainingState | None = None  # what ``resume`` needs to go on


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
    resume: ConditionalTrainingState | None = None,
    device: str | torch.device = "cpu",
) -> ConditionalFitResult:
    """Fit q(z | c) to ``energy`` with ``config`` (resolved for z's dimension; its batch is split
    into ``per_step`` conditions of batch // per_step draws each), ``hidden`` the hypernetwork's
    hidden sizes, on ``device`` in ``config.dtype``. ``progress(done, F_1, β, iters)`` every 1% of
    the steps; ``stop()`` after each step ends the fit there. ``resume``: a ``state`` of an
    earlier result, to go on to ``config.iters`` steps exactly as one run would have. The caller's
    global random state is left as it was; the returned flow and losses are on ``device``."""
    # from the origin: a start at p's mode would be one Gaussian for every c
    config = replace(config, start="origin").resolve(energy.dim)
    # the command line's thread policy (nfcli.threads) for a batch of draws of z
    config = replace(config, threads=use_threads(config.threads, Work(config.batch, energy.dim)))
    if resume is not None and resume.step > config.iters:
        raise NfcliError(
            f"The conditional fit to resume has done {resume.step} steps already; ask for more "
            f"(--iters {resume.step + max(1, resume.step // 2)}) to continue it."
        )
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _fit_conditional(energy, config, per_step, hidden, progress, stop, resume, device)


def _fit_conditional(
    energy: ConditionalEnergy,
    config: FitConfig,
    per_step: int,
    hidden: tuple[int, ...],
    progress: Callable[[int, float, float, int], None] | None,
    stop: Callable[[], bool] | None,
    resume: ConditionalTrainingState | None,
    device: torch.device,
) -> ConditionalFitResult:
    D, dtype = energy.dim, resolve_dtype(config.dtype)
    flow = ConditionalFlow(
        D, config.architecture(D), energy.lo.tolist(), energy.hi.tolist(), hidden
    ).to(device=device, dtype=dtype)
    n = max(config.batch // per_step, 1)
    g = torch.Generator().manual_seed(config.seed + 1)  # on the CPU, whatever the device
    opt = torch.optim.Adam(_groups(flow, OUTPUT_LR_SCALE), lr=config.lr)
    loss_hist = torch.full((config.iters,), float("nan"), device=device)
    loss1_hist = torch.full((config.iters,), float("nan"), device=device)
    start_step, before = 0, 0.0
    if resume is not None:
        flow.load_state_dict(resume.flow)
        opt.load_state_dict(resume.optimizer)
        g.set_state(resume.generator)
        set_rng(resume.rng, device)
        start_step, before = resume.step, resume.seconds
        loss_hist[:start_step] = resume.loss.to(device)
        loss1_hist[:start_step] = resume.loss_beta1.to(device)
    anneal, every = config.anneal_steps, max(config.iters // 100, 1)
    stopped, t, start = None, start_step - 1, time.perf_counter()
    for t in range(start_step, config.iters):
        beta = beta_schedule(t, anneal)
        for group in opt.param_groups:
            group["lr"] = group["scale"] * config.lr * lr_factor(t, config.iters, config.decay)
        c = draw_conditions(energy, per_step, g).to(device=device, dtype=dtype)
        z, log_q = flow.rsample(c, n)
        u = energy(z, c)
        finite = (u + log_q).isfinite()
        count = finite.sum().clamp(min=1)
        log_q_mean = log_q.where(finite, 0.0).sum() / count
        u_mean = u.where(finite, 0.0).sum() / count
        loss = log_q_mean + beta * u_mean
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm([p.grad for p in flow.parameters()])
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock must not stop before the GPU does
    seconds = before + time.perf_counter() - start
    steps = t + 1
    loss, loss1 = loss_hist[:steps].cpu(), loss1_hist[:steps].cpu()
    state = ConditionalTrainingState(
        steps,
        {k: v.detach().clone() for k, v in flow.state_dict().items()},
        opt.state_dict(),
        g.get_state(),
        get_rng(device),
        loss,
        loss1,
        seconds,
    )
    return ConditionalFitResult(
        flow, replace(config), per_step, loss, loss1, seconds, stopped, state
    )


def _groups(flow: ConditionalFlow, output_scale: float) -> list[dict]:
    """Adam's parameter groups: the hypernetwork's last weight at ``output_scale`` × lr (see
    OUTPUT_LR_SCALE), everything else (its bias: ψ's value where the weight is zero) at lr."""
    last = flow.net[-1].weight
    rest = [p for p in flow.parameters() if p is not last]
    return [{"params": rest, "scale": 1.0}, {"params": [last], "scale": output_scale}]


SELECT_CONDITIONS, SELECT_DRAWS = 16, 2048  # how restarts are compared (``mean_elbo``)


@torch.no_grad()
def mean_elbo(
    flow: ConditionalFlow, energy: ConditionalEnergy, conditions: Tensor, n: int
) -> float:
    """The ELBO E_q[−U − ln q] averaged over ``conditions`` (M, C), from n draws at each. ln Z(c)
    does not depend on the fit, so between fits of one family the higher mean ELBO is the lower
    mean KL(q(·|c) ‖ p(·|c))."""
    c = conditions.to(device=flow.lo.device, dtype=flow.lo.dtype)
    z, log_q = flow.rsample(c, n)
    log_w = -energy(z, c) - log_q
    # −∞ where U or ln q is not finite at some draw, as the ELBO of an unconditional report
    return float(log_w.mean()) if bool(log_w.isfinite().all()) else -math.inf


@dataclass
class RestartsResult:
    """``fit_conditional_restarts``: the kept fit, every restart's mean ELBO at the choice, and
    which was kept (its seed is the config's seed + kept)."""

    result: ConditionalFitResult
    scores: list[float]
    kept: int


def fit_conditional_restarts(
    energy: ConditionalEnergy,
    config: FitConfig,
    per_step: int = CONDITIONS_PER_STEP,
    hidden: tuple[int, ...] = (64, 64),
    progress: Callable[[int, float, float, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
    device: str | torch.device = "cpu",
) -> RestartsResult:
    """``config.restarts`` = R conditional fits, with seeds seed, seed + 1, …, one after another,
    each to the end of its annealing (``nfcli.train.select_step``, where an unconditional fit's
    restarts are compared too), compared by ``mean_elbo`` on SELECT_CONDITIONS conditions drawn
    once; the best then goes on alone to ``config.iters``. The kept fit is exactly the one fit of
    its seed (a resumed fit equals an uninterrupted one); the cost is R × the annealing steps plus
    the rest once. A stop while exploring returns that restart's steps, with no state to resume."""
    from nfcli.train import select_step  # the same choice point as unconditional restarts

    single = replace(config, restarts=1)
    choose = select_step(replace(single, start="origin").resolve(energy.dim))
    g = torch.Generator().manual_seed(config.seed)
    conditions = draw_conditions(energy, SELECT_CONDITIONS, g)
    done, interrupted = [0], [False]

    def at_choice() -> bool:  # the restart's stop: the choice point, or the caller's stop
        done[0] += 1
        if stop is not None and stop():
            interrupted[0] = True
            return True
        return done[0] >= choose

    explored: list[tuple[float, FitConfig, ConditionalFitResult]] = []
    for r in range(config.restarts):
        cfg = replace(single, seed=config.seed + r)
        done[0] = 0
        res = fit_conditional(energy, cfg, per_step, hidden, progress, at_choice, device=device)
        if interrupted[0]:  # stopped while exploring: no state resumes all R restarts
            res.state = None
            return RestartsResult(res, [s for s, _, _ in explored], r)
        res.stopped = None  # stopped at the choice point, by design
        explored.append((mean_elbo(res.flow, energy, conditions, SELECT_DRAWS), cfg, res))
    scores = [s for s, _, _ in explored]
    kept = max(range(len(scores)), key=lambda i: scores[i])
    _, cfg, best = explored[kept]
    if len(best.loss) < cfg.iters:
        best = fit_conditional(
            energy, cfg, per_step, hidden, progress, stop, resume=best.state, device=device
        )
    return RestartsResult(best, scores, kept)
