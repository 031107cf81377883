"""Fitting a flow by annealed reverse KL (Rezende & Mohamed 2015, section 6).

Minimises F_β = E_{z0~q0}[ln q0(z0) − Σ_k ln|det J_k| + β_t·U(z_K)] with Adam, where the inverse
temperature β_t = min(1, β_0 + t/T_anneal) rises from β_0 = 0.01 to 1 over ``anneal`` steps (the
paper's schedule with T = 10,000). At β = 1, F is the negative ELBO and KL(q‖p) = F + ln Z.
The learning rate is held, then decays by cosine to zero over the last ``decay`` fraction of steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from nfcli.compiled import CONVERGED_STEPS, choose_energy, choose_flow
from nfcli.config import ANNEAL_FRACTION, FitConfig, extend  # noqa: F401  (re-exported)
from nfcli.devices import resolve_dtype, reuse_freed_memory
from nfcli.diagnostics import KHAT_TRUST, importance_sampling
from nfcli.energy import Energy, undefined_region
from nfcli.errors import NfcliError
from nfcli.flows import Flow
from nfcli.improper import (  # noqa: F401  (SPREAD_*, proper_by_quadrature re-exported)
    SPREAD_EXTENT,
    SPREAD_LOSS,
    SPREAD_MOVE,
    SPREAD_SPAN,
    SPREAD_TREND,
    improper,
    proper_by_quadrature,
    spread_score,
    spreading,
    travelling,
    where_q_is,
)
from nfcli.mixture import (
    REWEIGHT_EVERY,
    is_mixture,
    mixture_start,
    modes_out_of_reach,
    reweight,
)
from nfcli.mode import GaussianStart, gaussian_start, resolution
from nfcli.resume import get_rng, set_rng, to_cpu
from nfcli.threads import Work, use_threads


def beta_schedule(t: int | Tensor, anneal: int, beta0: float = 0.01):
    """β_t = min(1, β_0 + t/anneal); 1 throughout when anneal = 0."""
    if anneal == 0:
        return 1.0 if isinstance(t, int) else torch.ones_like(t, dtype=torch.float32)
    if isinstance(t, int):
        return min(1.0, beta0 + t / anneal)
    return (beta0 + t.float() / anneal).clamp(max=1.0)


def lr_factor(t: int, iters: int, decay: float) -> float:
    """1 until the last ``decay``·iters steps, then a cosine from 1 to 0."""
    start = iters * (1 - decay)
    if t < start or decay == 0:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (t - start) / (iters - start)))


Progress = Callable[[int, float, float, int], None]  # (done, recent β=1 loss, β, planned end)
Monitor = Callable[[int, Flow], None]  # (steps done, the flow being fitted)
Stop = Callable[[], bool]  # polled after every step: True ends the fit there (e.g. on Ctrl-C)
N_SELECT = 20_000  # importance samples per restart to choose the kept one
CHECK_EVERY = 100  # steps between the checks for a loss that stays non-finite or keeps falling
# ``converged``: the loss has levelled off (measured: README, "Real posteriors")
CONVERGE_WINDOW, CONVERGE_TOL, CONVERGE_CALM, CONVERGE_MIN = 500, 0.01, 3, 1000

# the wall energy's rise outside the support, in nats per standard deviation of q (``wall_rise``)
WALL_SLOPE = 100.0


@dataclass
class TrainingState:
    """Everything a fit needs to go on exactly where it stopped: saved in the checkpoint, so that
    ``fit(..., resume=state)`` with the same config continues as if it had never stopped.

    ``flow`` and ``optimizer`` hold R restarts while they explore and one flow after
    ``select_step``; the loss histories have a column per restart (NaN where a restart was no
    longer fitted). ``rng`` is torch's global CPU random state (and the device's, on CUDA)."""

    step: int  # steps done
    flow: dict[str, Tensor]  # Flow.state_dict()
    flow_restarts: int
    optimizer: dict[str, Any]  # Adam's state_dict: moments and step counts
    kept: int
    restarts: list[dict[str, float]]
    loss: Tensor  # (step, R) F_β per step
    loss_beta1: Tensor  # (step, R) F at β = 1
    counts: dict[str, int]  # non-finite energies and gradients met, steps skipped
    checks: list[dict[str, Any]]  # where q was at each check after annealing (``_check``)
    rng: dict[str, Tensor]
    seconds: float
    end: int | None = None  # where the steps end once converged (None: at the config's iters)
    converged: int | None = None  # the step at which the loss had levelled off
    calm: int = 0  # checks in a row at which it had (``converged``)
    inside: Inside | None = None  # points inside the support (``wall_rise``), once needed

    def to_dict(self) -> dict[str, Any]:
        """Plain types and CPU tensors only (the checkpoint is loaded with weights_only)."""
        d = asdict(self)
        d["flow"] = {k: v.detach().cpu().clone() for k, v in self.flow.items()}
        d["optimizer"] = to_cpu(self.optimizer)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingState:
        """From ``to_dict``'s dict, of this version or an older one (fields with defaults may be
        absent)."""
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        if isinstance(values.get("inside"), dict):
            values["inside"] = Inside(**values["inside"])
        return cls(**values)


@dataclass
class FitResult:
    flow: Flow  # the kept flow (with restarts, the one ``choose_restart`` chose)
    config: FitConfig
    loss: Tensor  # (steps,) the kept flow's annealed objective F_β at each step
    loss_beta1: Tensor  # (steps,) its F at β = 1 on the same batch: the negative ELBO
    seconds: float  # the optimisation's wall time (all restarts together, all sessions)
    restarts: list[dict[str, float]] = field(default_factory=list)  # one summary per restart
    kept: int = 0
    state: TrainingState | None = None  # what ``resume`` needs to go on
    stopped: str | None = None  # None: ran every step; else "interrupted", "nonfinite", "improper"
    message: str = ""  # why it stopped, for the user
    counts: dict[str, int] = field(default_factory=dict)
    start: GaussianStart | None = None  # where q started (config.start "mode")
    converged: int | None = None  # the step at which the loss levelled off (config.converge)
    # the share of this session's optimisation time spent in U and its gradient (CPU only)
    energy_share: float | None = None
    energy_compiled: str | None = None  # how U was compiled, or why compiling it failed
    flow_compiled: str | None = None  # how the flow's step was compiled, or why that failed

    @property
    def steps(self) -> int:
        return len(self.loss)

    @property
    def iters_per_second(self) -> float:
        return len(self.loss) / self.seconds if self.seconds > 0 else math.inf


def fit(
    energy: Energy,
    config: FitConfig,
    progress: Progress | None = None,
    every: int = 100,
    device: str | torch.device = "cpu",
    monitor: Monitor | None = None,
    stop: Stop | None = None,
    resume: TrainingState | None = None,
) -> FitResult:
    """Fit a flow to exp(−U) by annealed reverse KL on ``device``. ``progress`` is called every
    ``every`` steps (the only points where the loop waits for the loss values); so is ``monitor``
    (benchmarks use it to measure the flow as it trains). The same seed gives the same result on
    one device; the caller's global random state is left as it was. The returned flow and losses
    stay on ``device``.

    With ``config.restarts`` = R > 1, R independent flows are fitted as one batched computation
    (parameters with a leading dimension R; the loss is the sum of their objectives, so each one's
    gradient is its own, and Adam's update is elementwise) until ``select_step``; there
    ``choose_restart`` keeps the one with the highest ln Z estimate, which goes on alone.

    Samples where U or ln q is NaN or infinite are left out of the step's mean, and rows of
    ∂F/∂z that are not finite are zeroed (both counted in ``counts``); a step whose gradient is
    still not finite is skipped, so the parameters never become NaN. The fit ends early, with
    ``stopped`` and ``message`` saying why, when ``stop()`` returns True (it is polled after every
    step), when the loss has had no finite value for ``CHECK_EVERY`` steps, or when q keeps
    spreading while the loss falls without bound (``spreading``). ``resume``: a ``state`` of an
    earlier result, to go on to ``config.iters`` steps exactly as one run would have.

    ``config`` is resolved for the target first (``FitConfig.resolve``; the result's config is
    that). With ``start`` "mode" the flow starts as ``nfcli.mode.gaussian_start``'s Gaussian
    (its time counts in ``seconds``). With ``converge``, ``config.iters`` is the most steps: once
    the loss at β = 1 has fallen by less than CONVERGE_TOL nats between successive windows of
    CONVERGE_WINDOW steps at CONVERGE_CALM checks in a row (``converged``), the learning rate's
    cosine decay starts there, as if ``iters`` had been that step / (1 − ``decay``), and the fit
    ends at that new end."""
    config = plan(energy, config)
    config.validate(energy.dim)
    # the command line's thread policy (nfcli.threads), so that the library fits as fast
    config = replace(config, threads=use_threads(config.threads, fit_work(config, energy.dim)))
    reuse_freed_memory()
    device = torch.device(device)
    if resume is not None and resume.step > config.iters:
        raise NfcliError(
            f"The fit to resume has done {resume.step} steps already; ask for more "
            f"(--iters {resume.step + config.iters // 2 or 1}) to continue it."
        )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _fit(energy, config, progress, every, device, monitor, stop, resume)


def fit_work(config: FitConfig, dim: int) -> Work:
    """The size of a fit's largest tensors, for its thread count: batch × restarts draws of
    ``dim`` variables (``config`` resolved)."""
    return Work(config.batch * config.restarts, dim)


def plan(energy: Energy, config: FitConfig) -> FitConfig:
    """What is fitted to ``energy``: ``config`` with its start chosen in 2-D where the target asks
    for it (``low_dimensional_start``), then resolved for the dimension (``FitConfig.resolve``).
    Idempotent: a planned config plans to itself (so resume, whose config was planned, keeps it)."""
    return low_dimensional_start(energy, config).resolve(energy.dim)


def low_dimensional_start(energy: Energy, config: FitConfig) -> FitConfig:
    """``config`` with its start chosen where it is "auto" in 2-D: the paper's (origin,
    annealed; ``FitConfig.resolve``) unless p has several modes of which some lie beyond the
    reach of its N(0, base_scale²), three of its sds (``nfcli.mixture.modes_out_of_reach``):
    then the start from the modes (``--start mode``, which keeps every mode the survey finds), with
    what "auto" gives such a start from 3-D on: a RealNVP flow (its layers start as the identity,
    so the modes' mixture is q's start exactly; planar layers start as a random map), 256 draws
    per step, and a fit that stops once converged."""
    if config.start != "auto" or energy.dim != 2 or config.base != "gaussian":
        return config
    config.validate(energy.dim)
    if not modes_out_of_reach(energy, 3 * config.base_scale, seed=config.seed):
        return config
    return replace(
        config,
        start="mode",
        flow="realnvp" if config.flow == "auto" else config.flow,
        converge=True if config.converge is None else config.converge,
    )


@dataclass
class Inside:
    """Points known to be inside the support, one per restart, and their energies: where a batch
    with no sample inside is pulled to (``wall_rise``). A point inside stays inside, so an old one
    is as good a target as a new one."""

    point: Tensor  # (R, D)
    u: Tensor  # (R,)

    def keep(self, r: int) -> Inside:
        return Inside(self.point[r : r + 1], self.u[r : r + 1])


def wall_rise(
    z: Tensor, u: Tensor, finite: Tensor, wall: Tensor, inside: Inside
) -> tuple[Tensor, Tensor]:
    """A hard wall's stand-in energy: where U = +∞ or NaN (p = 0, outside the support, or where U
    underflowed), a sample would be left out of the loss and exert no pull, and q could drift
    out of the support unopposed. Instead it is given the energy

        U_wall(z_i) = max_j U(z_j) + WALL_SLOPE · ‖z_i − z_j*‖ / σ,

    the max over the batch's samples with finite U (or, in a batch with none, ``inside``'s
    energy), z_j* the nearest of them and ``inside``'s point to z_i, and σ q's mean standard
    deviation per coordinate (all three held fixed in the gradient): worse than every sample
    inside, and rising steeply with the distance back in, so that its gradient pulls z_i towards
    the support, with the same force at any scale of q.

    z: (R, B, D), differentiable; u: (R, B), detached; finite, wall: (R, B) masks. Returns the
    max finite U per restart (R,) and the rise (R, B), zero except at ``wall``."""
    zd = z.detach()
    r, b = wall.nonzero(as_tuple=True)  # (M,) restarts and rows of the samples outside
    targets = torch.cat([zd, inside.point.unsqueeze(1)], 1)  # (R, B + 1, D): the batch, a point
    ok = torch.cat([finite, torch.ones_like(finite[:, :1])], 1)
    dist = (targets[r] - zd[r, b].unsqueeze(1)).norm(dim=-1)  # (M, B + 1)
    j = dist.masked_fill(~ok[r], math.inf).argmin(-1)  # the nearest point inside
    sigma = zd.std(1).mean(-1).clamp_min(1e-12)  # (R,)
    d = (z[r, b] - targets[r, j]).norm(dim=-1)
    rise = torch.zeros_like(u, dtype=z.dtype).index_put((r, b), WALL_SLOPE * d / sigma[r])
    top = u.where(finite, -math.inf).amax(-1)
    return top.where(finite.any(-1), inside.u), rise


def update_inside(inside: Inside | None, z: Tensor, u: Tensor, finite: Tensor) -> Inside | None:
    """``inside`` with each restart's point replaced by its batch's lowest-energy sample inside,
    where the batch has one (z: (R, B, D), u: (R, B), finite: (R, B)); None while none is known."""
    has = finite.any(-1)  # (R,)
    i = u.where(finite, math.inf).argmin(-1)
    best = Inside(z.detach()[torch.arange(len(i)), i], u[torch.arange(len(i)), i])
    if inside is None:
        return best if bool(has.all()) else None
    return Inside(best.point.where(has[:, None], inside.point), best.u.where(has, inside.u))


def probe_inside(
    energy: Energy, restarts: int, dim: int, seed: int, dtype, device
) -> Inside | None:
    """A point inside the support when no sample of q has been: the lowest-energy of 1024 draws of
    N(0, s²) at each of s = 1, 4, 16, 64 with finite U (its own generator: the fit's random
    stream is untouched), or None if every one is outside."""
    g = torch.Generator().manual_seed(seed + 17)
    scales = torch.tensor([1.0, 4.0, 16.0, 64.0]).repeat_interleave(1024)[:, None]
    pts = (torch.randn(len(scales), dim, generator=g) * scales).to(device=device, dtype=dtype)
    with torch.no_grad():
        u = energy(pts)
    u = u.where(u.isfinite(), math.inf)
    if not bool(u.isfinite().any()):
        return None
    i = int(u.argmin())
    return Inside(pts[i].expand(restarts, dim).clone(), u[i].expand(restarts).clone())


def select_step(config: FitConfig) -> int:
    """When restarts stop exploring: at the end of annealing, the point by which a fit has found,
    or lost, its modes; the kept restart then goes on alone. Without annealing there is no such
    point (on the ring of 8 Gaussians, choosing at a quarter of the steps kept no more fits with
    every mode than single fits had), so the restarts run to the end."""
    return min(config.iters, config.anneal_steps or config.iters)


def _fit(
    energy: Energy,
    config: FitConfig,
    progress: Progress | None,
    every: int,
    device: torch.device,
    monitor: Monitor | None,
    stop: Stop | None,
    resume: TrainingState | None,
) -> FitResult:
    R, B, D = config.restarts, config.batch, energy.dim
    dtype = resolve_dtype(config.dtype)
    restarts_now = resume.flow_restarts if resume is not None else R
    began = time.perf_counter()
    start_at, components = None, None
    if resume is None and config.start == "mode":
        start_at = gaussian_start(energy, seed=config.seed, resolution=resolution(dtype))
        # a survey of U for the modes the start's few L-BFGS runs did not reach, kept if there
        # are several (1–3 s on the posteriors of benchmarks/, 11 s on GARCH's Python-loop U)
        if config.base == "gaussian":
            components = mixture_start(energy, start_at.laplace, seed=config.seed)
        if components is not None:
            config = replace(config, components=components.count)
            start_at = replace(start_at, source="mixture", modes=components.count)
        elif start_at.modes > 1 and config.anneal is None:  # one Gaussian over them: anneal
            config = replace(config, anneal=round(ANNEAL_FRACTION * config.iters))
    flow = Flow(D, config.architecture(D), restarts_now)
    if components is not None:
        flow.start_at_modes(components)
    elif start_at is not None:
        flow.start_at(start_at.mean, start_at.covariance)
    flow = flow.to(device=device, dtype=dtype)
    mixture = is_mixture(flow)
    if mixture and resume is None:  # the modes' masses by importance sampling, not Laplace's
        reweight(flow, energy, seed=config.seed)
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr, fused=True)
    loss_hist = torch.full((config.iters, R), math.nan, device=device)
    loss1_hist = torch.full((config.iters, R), math.nan, device=device)
    # counted on the device, without a wait of their own: the finite samples of steps that had a
    # non-finite one (those of the other steps, ``plain``, are counted here; both of ``drawn``),
    # rows of ∂F/∂z zeroed, steps skipped; ``prior``: the counts of the fit being resumed
    finite_seen, bad_rows, skipped = (torch.zeros((), device=device) for _ in range(3))
    prior, drawn, plain = dict.fromkeys(COUNTS, 0), 0, 0
    kept, summaries, checks, start_step, before = 0, [], [], 0, 0.0
    end, converged, calm = config.iters, None, 0
    inside = resume.inside if resume is not None else None
    pulled = -1  # the last step at which the wall pulled samples back
    if resume is not None:
        flow.load_state_dict(resume.flow)
        opt.load_state_dict(resume.optimizer)
        kept, summaries, checks = resume.kept, list(resume.restarts), list(resume.checks)
        start_step, before = resume.step, resume.seconds
        loss_hist[:start_step] = resume.loss.to(device)
        loss1_hist[:start_step] = resume.loss_beta1.to(device)
        prior = dict(resume.counts)
        set_rng(resume.rng, device)
        if resume.end is not None and resume.step < resume.end:  # stopped while decaying
            end, converged, calm = resume.end, resume.converged, resume.calm
    cols = slice(kept, kept + 1) if flow.restarts < R else slice(None)
    anneal, choose_at = config.anneal_steps, select_step(config) if R > 1 else -1
    stopped, message, z, t = None, "", None, start_step - 1

    # the energy's share of the steps' time (on the CPU, where the clock sees the work done):
    # its forward call, and its backward from ∂F/∂U's arrival to ∂F/∂z's (``finite_rows``)
    timed = device.type == "cpu"
    energy_time, backward_from = [0.0], [0.0]

    def mark_backward(g: Tensor) -> Tensor:
        backward_from[0] = time.perf_counter()
        return g

    def finite_rows(g: Tensor) -> Tensor:  # ∂F/∂z: zero the rows that are not finite
        if timed and backward_from[0]:
            energy_time[0] += time.perf_counter() - backward_from[0]
            backward_from[0] = 0.0
        if timed and bool(g.isfinite().all()):  # on the CPU, asking costs no wait: none to zero
            return g
        ok = g.isfinite().all(-1, keepdim=True)
        bad_rows.add_(ok.numel() - ok.sum())
        return g.where(ok, 0.0)

    # the U of the training loop: compiled where it pays (nfcli.compiled; its probe points have a
    # generator of their own, so that the fit's random stream is untouched)
    planned = config.iters - start_step
    expected = min(planned, CONVERGED_STEPS) if config.converge else planned
    chosen = choose_energy(energy, config.compile_energy, (R * B, D), expected, device, dtype)
    pushed = choose_flow(flow, config.compile_flow, (flow.restarts, B, D), expected, device, dtype)
    start = time.perf_counter()
    before += start - began  # the Gaussian start's search (and the energy's compilation)
    for t in range(start_step, config.iters):
        if t >= end:  # converged: the decay has run its course
            t -= 1  # the last step done
            break
        if t == choose_at and flow.restarts > 1:  # the restarts have explored; the best goes on
            kept, summaries = choose_restart(flow, energy)
            flow, opt = _keep(flow, opt, kept)
            if pushed.compiled:  # the kept flow is a new module, of one restart
                left = min(config.iters, end) - t
                pushed = choose_flow(flow, config.compile_flow, (1, B, D), left, device, dtype)
            else:
                pushed = replace(pushed, fn=flow.push)
            inside = inside.keep(kept) if inside is not None else None
            cols = slice(kept, kept + 1)
        beta = beta_schedule(t, anneal)
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(t, end, config.decay)
        z, log_q = pushed.fn(flow.base.standard_rsample(B, None))  # Flow.rsample_all
        z_u = z.reshape(-1, D)
        z_u.register_hook(finite_rows)  # U's own gradient; the wall's reaches z beside it
        called = time.perf_counter()
        u = chosen.fn(z_u)
        energy_time[0] += time.perf_counter() - called
        if timed and u.requires_grad:
            u.register_hook(mark_backward)
        u = u.reshape(-1, B)
        # the means over the samples where both U and ln q are finite; NaN (0/0) where none is,
        # with a zero gradient: ``where`` passes none back to the samples it left out (when all
        # are finite, as in most steps, the same sums without it: the same values and gradients)
        finite = (u + log_q).isfinite()
        drawn += finite.numel()
        all_finite = bool(finite.all())  # one sync per step, on a GPU
        if all_finite:
            plain += finite.numel()
            log_q_mean, u_mean = log_q.sum(-1) / B, u.sum(-1) / B
        else:
            n = finite.sum(-1)
            finite_seen.add_(n.sum())
            log_q_mean = log_q.where(finite, 0.0).sum(-1) / n
            u_mean = u.where(finite, 0.0).sum(-1) / n
        loss = log_q_mean + beta * u_mean  # one objective per restart
        outside = False  # any sample outside the support (U NaN or +∞ where ln q is finite)?
        if not all_finite:
            wall = (u.isnan() | (u == math.inf)) & log_q.isfinite()  # there p = 0
            outside = bool(wall.any())
        if t == 0 or outside:
            inside = update_inside(inside, z, u.detach(), finite)
        if outside and inside is None:  # no sample of q has been inside yet: look for a point
            inside = probe_inside(energy, flow.restarts, D, config.seed, z.dtype, device)
        if outside and inside is not None:  # pulled back by the wall energy
            pulled = t
            top, rise = wall_rise(z, u.detach(), finite, wall, inside)
            used = finite | wall
            n = used.sum(-1)
            stand_in = (beta * top.unsqueeze(-1) + rise).where(wall, 0.0)
            loss = (
                log_q.where(used, 0.0).sum(-1)
                + beta * u.where(finite, 0.0).sum(-1)
                + stand_in.sum(-1)
            ) / n
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        # skip the step (fused Adam leaves every parameter and moment as it was) when the
        # gradient's norm is not finite, which also keeps Adam's ĝ² from overflowing, or when
        # no sample had a finite loss
        norm = grad_norm([p.grad for p in flow.parameters()])
        bad = ~norm.isfinite()
        opt.found_inf = (bad if all_finite else bad | (n.max() == 0)).float()  # all finite: n > 0
        opt.step()
        if mixture and (t + 1) % REWEIGHT_EVERY == 0:  # the weights follow the components
            reweight(flow, energy, seed=config.seed + t + 1)
        with torch.no_grad():
            skipped.add_(opt.found_inf)
            loss_hist[t, cols] = loss
            loss1_hist[t, cols] = log_q_mean + u_mean
        if (t + 1) % every == 0 or t + 1 == config.iters:
            if progress is not None:
                recent = loss1_hist[max(0, t + 1 - every) : t + 1, cols].nanmean(0)
                progress(t + 1, recent.nan_to_num(math.inf).min().item(), beta, end)
            if monitor is not None:
                monitor(t + 1, flow)
        if (t + 1) % CHECK_EVERY == 0 and config.converge and converged is None:
            calm = calm + 1 if levelled(loss1_hist[: t + 1, cols], t + 1 - anneal) else 0
            if calm >= CONVERGE_CALM:  # decay from here, over decay/(1 − decay) of the steps
                converged = t + 1
                stretched = round(converged / (1 - config.decay)) if config.decay < 1 else 0
                end = min(config.iters, max(converged + CHECK_EVERY, stretched))
        if (t + 1) % CHECK_EVERY == 0:
            stopped, message = _check(
                t + 1,
                loss1_hist[t + 1 - CHECK_EVERY : t + 1, cols],
                z,
                checks,
                anneal,
                config,
                energy,
                pulling=pulled > t - CHECK_EVERY,
            )
        if stopped is None and stop is not None and stop():
            stopped = "interrupted"
            message = f"Interrupted at step {t + 1} of {config.iters}."
        if stopped is not None:
            break
    if mixture and stopped is None and (t + 1) % REWEIGHT_EVERY:  # the end: weights once more
        reweight(flow, energy, seed=config.seed + t + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock must not stop before the GPU does
    seconds = before + time.perf_counter() - start
    done = t + 1
    ran = seconds - before
    energy_share = energy_time[0] / ran if timed and ran > 0 and done > start_step else None
    state = TrainingState(
        done,
        {k: v.detach().clone() for k, v in flow.state_dict().items()},
        flow.restarts,
        opt.state_dict(),
        kept,
        summaries,
        loss_hist[:done].cpu(),
        loss1_hist[:done].cpu(),
        {
            "nonfinite_energies": prior["nonfinite_energies"] + drawn - plain - int(finite_seen),
            "nonfinite_gradients": prior["nonfinite_gradients"] + int(bad_rows),
            "skipped_steps": prior["skipped_steps"] + int(skipped),
        },
        checks,
        get_rng(device),
        seconds,
        end if converged is not None else None,
        converged,
        calm,
        inside,
    )
    if flow.restarts > 1:  # the restarts explored to the end (no annealing), or were stopped
        kept, summaries = choose_restart(flow, energy)
        flow = flow.select(kept)
    loss, loss1 = loss_hist[:done, kept].float().cpu(), loss1_hist[:done, kept].float().cpu()
    return FitResult(
        flow,
        config,
        loss,
        loss1,
        seconds,
        summaries,
        kept,
        state,
        stopped,
        message,
        state.counts,
        start_at,
        converged,
        energy_share,
        chosen.note if chosen.compiled or "failed" in chosen.note else None,
        pushed.note if pushed.compiled or "failed" in pushed.note else None,
    )


def grad_norm(grads: list[Tensor]) -> Tensor:
    """‖(g_1, …, g_n)‖₂ over every gradient as one vector (as torch.nn.utils.get_total_norm,
    to rounding, and so equally finite or not), in two operations: at 2-D sizes the step's
    time is the operations' count, and get_total_norm's grouping and per-tensor norms cost
    ~60 µs a step more (one thread)."""
    return torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads if g is not None]))


def levelled(loss: Tensor, after_anneal: int) -> bool:
    """Whether the loss (steps, R) at β = 1 fell by less than CONVERGE_TOL nats from the mean of
    one window of CONVERGE_WINDOW steps to the next (the last two), in every column, at least
    CONVERGE_MIN steps after annealing ended (``after_anneal``: steps since)."""
    W = CONVERGE_WINDOW
    if after_anneal < max(CONVERGE_MIN, 2 * W):
        return False
    prev, last = loss[-2 * W : -W].nanmean(0), loss[-W:].nanmean(0)
    fell = (prev - last).nan_to_num(math.inf)
    return bool((fell < CONVERGE_TOL).all())


COUNTS = ("nonfinite_energies", "nonfinite_gradients", "skipped_steps")


def _check(
    step: int,
    window: Tensor,
    z: Tensor,
    checks: list[dict[str, Any]],
    anneal: int,
    config: FitConfig,
    energy: Energy,
    pulling: bool = False,
) -> tuple[str | None, str]:
    """Every CHECK_EVERY steps: stop if the loss had no finite value in the whole window (the
    steps' F at β = 1, one column per restart) although no wall was ``pulling`` q back into the
    support in it (q that starts outside it may take a few hundred steps to arrive), or if,
    after annealing, q keeps spreading or drifting while the loss falls (``spreading``)."""
    if window.isnan().all() and not pulling:
        return "nonfinite", (
            f"Stopped at step {step} of {config.iters}: U(z) or ln q was NaN or infinite at every "
            f"sample of the last {CHECK_EVERY} steps, so the loss had no finite value to "
            f"minimise. {undefined_region(energy, z.reshape(-1, z.shape[-1]))} The parameters "
            "are those of the last step with a finite loss."
        )
    if step - CHECK_EVERY < anneal:
        return None, ""
    checks.append({"step": step, "loss": window.nanmean(0).tolist(), **where_q_is(z)})
    message = improper(checks, config, energy, z)
    return ("improper" if message else None), message


def _keep(flow: Flow, opt: torch.optim.Adam, r: int) -> tuple[Flow, torch.optim.Adam]:
    """Restart r as a single flow with its own slice of Adam's state, so that it continues
    exactly as it would have in the batched run."""
    single = flow.select(r)
    new_opt = torch.optim.Adam(single.parameters(), lr=opt.param_groups[0]["lr"], fused=True)
    for old, new in zip(flow.parameters(), single.parameters(), strict=True):
        state = opt.state.get(old)
        if state:
            new_opt.state[new] = {
                k: (v[r : r + 1].clone() if v.dim() else v.clone()) for k, v in state.items()
            }
    return single, new_opt


def choose_restart(
    flow: Flow, energy: Energy, n: int = N_SELECT
) -> tuple[int, list[dict[str, float]]]:
    """The restart with the highest ln Z estimate, and every restart's summary. A flow that lost a
    mode estimates ln Z too low, by ln 2 when it lost half the mass. The estimate is the
    importance-sampling ln Z where PSIS says it is reliable (k̂ ≤ 0.7); otherwise the ELBO, a
    lower bound that heavy-tailed weights cannot inflate (one lucky weight can: seen on U1)."""
    summaries = []
    for r in range(flow.restarts):
        imp = importance_sampling(flow.select(r), energy, n)
        reliable = math.isfinite(imp.log_z) and imp.khat <= KHAT_TRUST
        summaries.append(
            {
                "restart": r,
                "log_z_is": imp.log_z,
                "log_z_is_se": imp.log_z_se,
                "khat": imp.khat,
                "ess_fraction": imp.ess_fraction,
                "elbo": imp.elbo,
                "score": imp.log_z if reliable else imp.elbo,
            }
        )
    finite = [s for s in summaries if math.isfinite(s["score"])] or summaries
    return int(max(finite, key=lambda s: s["score"])["restart"]), summaries


def restart_disagreement(restarts: list[dict[str, float]]) -> tuple[float, float]:
    """How far apart the restarts' reliable (k̂ ≤ 0.7) importance-sampling ln Z estimates are
    (max − min), and the noise that would explain it: 3 combined standard errors of that pair plus
    0.01 nats for the estimator's small bias. Importance sampling estimates ln Z without bias
    whatever q is, as long as q covers p, so restarts that agree with p disagree only by noise."""
    values = [s for s in restarts if math.isfinite(s["log_z_is"]) and s["khat"] <= KHAT_TRUST]
    if len(values) < 2:
        return 0.0, 0.0
    hi = max(values, key=lambda s: s["log_z_is"])
    lo = min(values, key=lambda s: s["log_z_is"])
    noise = 3 * math.hypot(hi["log_z_is_se"], lo["log_z_is_se"]) + 0.01
    return hi["log_z_is"] - lo["log_z_is"], noise
