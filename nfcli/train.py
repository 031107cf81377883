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
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor

from nfcli.devices import resolve_dtype, reuse_freed_memory
from nfcli.diagnostics import KHAT_TRUST, importance_sampling
from nfcli.energy import Energy
from nfcli.errors import NfcliError
from nfcli.flows import FLOW_TYPES, Flow

ANNEAL_FRACTION = 0.375  # the measured defaults: 3000 of 8000 steps


@dataclass
class FitConfig:
    """Every knob of a fit. The defaults were chosen with ``benchmarks/sweep.py`` and are checked
    by ``benchmarks/quality.py`` (README, "Quality at defaults")."""

    K: int = 32
    flow: str = "planar"
    iters: int = 8000
    batch: int = 1024  # per-step cost is mostly fixed overhead in 2-D: 1024 costs ≈ 256's
    lr: float = 5e-3
    seed: int = 0
    anneal: int | None = None  # steps of β from 0.01 to 1; 0: off; None: 3/8 of iters
    decay: float = 0.3  # fraction of the steps, at the end, over which lr decays to 0
    init_scale: float = 0.25  # std of the initial u, w (planar) or centres (radial)
    base_scale: float = 2.0  # initial std of q0: wide, so that annealing starts over every mode
    restarts: int = 1  # independent flows fitted together; see ``fit``
    dtype: str = "float32"  # or "float64"

    def validate(self) -> None:
        checks = [
            ("K", self.K >= 1, "the number of layers; use e.g. --K 16"),
            ("restarts", self.restarts >= 1, "the number of flows fitted at once; e.g. 8"),
            ("iters", self.iters >= 1, "the number of optimisation steps; use e.g. --iters 5000"),
            ("batch", self.batch >= 1, "samples per step; use e.g. --batch 256"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "Adam's step size; use e.g. --lr 1e-3"),
            (
                "anneal",
                self.anneal is None or self.anneal >= 0,
                "steps of β's schedule, 0 for none",
            ),
            ("decay", 0 <= self.decay <= 1, "a fraction between 0 and 1"),
            ("init_scale", self.init_scale > 0, "a positive standard deviation"),
            ("base_scale", self.base_scale > 0, "a positive standard deviation"),
        ]
        for name, ok, meaning in checks:
            if not ok:
                raise NfcliError(
                    f"{name} = {getattr(self, name)} is out of range: it is {meaning}. "
                    "Give a positive value."
                )
        resolve_dtype(self.dtype)
        if self.flow not in FLOW_TYPES:
            raise NfcliError(
                f"Unknown flow type {self.flow!r}. Choose one of: {', '.join(FLOW_TYPES)} "
                "(e.g. --flow radial)."
            )

    @property
    def anneal_steps(self) -> int:
        """The β schedule's length: ``anneal``, or 3/8 of the steps when it is not given."""
        return round(ANNEAL_FRACTION * self.iters) if self.anneal is None else self.anneal

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return asdict(self)


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


@dataclass
class FitResult:
    flow: Flow  # the kept flow (with restarts, the one ``choose_restart`` chose)
    config: FitConfig
    loss: Tensor  # (iters,) the kept flow's annealed objective F_β at each step
    loss_beta1: Tensor  # (iters,) its F at β = 1 on the same batch: the negative ELBO
    seconds: float  # the optimisation's wall time (all restarts together)
    restarts: list[dict[str, float]] = field(default_factory=list)  # one summary per restart
    kept: int = 0

    @property
    def iters_per_second(self) -> float:
        return len(self.loss) / self.seconds if self.seconds > 0 else math.inf


Progress = Callable[[int, float, float], None]  # (steps done, recent β=1 loss, β)
Monitor = Callable[[int, Flow], None]  # (steps done, the flow being fitted)
N_SELECT = 20_000  # importance samples per restart to choose the kept one


def fit(
    energy: Energy,
    config: FitConfig,
    progress: Progress | None = None,
    every: int = 100,
    device: str | torch.device = "cpu",
    monitor: Monitor | None = None,
) -> FitResult:
    """Fit a flow to exp(−U) by annealed reverse KL on ``device``. ``progress`` is called every
    ``every`` steps (the only points where the loop waits for the loss values); so is ``monitor``
    (benchmarks use it to measure the flow as it trains). The same seed gives the same result on
    one device; the caller's global random state is left as it was. The returned flow and losses
    stay on ``device``.

    With ``config.restarts`` = R > 1, R independent flows are fitted as one batched computation
    (parameters with a leading dimension R; the loss is the sum of their objectives, so each one's
    gradient is its own, and Adam's update is elementwise) until ``select_step``; there
    ``choose_restart`` keeps the one with the highest ln Z estimate, which goes on alone."""
    config.validate()
    reuse_freed_memory()
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _fit(energy, config, progress, every, device, monitor)


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
) -> FitResult:
    R, B, D = config.restarts, config.batch, energy.dim
    flow = Flow(D, config.K, config.flow, config.init_scale, config.base_scale, restarts=R)
    flow = flow.to(device=device, dtype=resolve_dtype(config.dtype))
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr, fused=True)
    loss_hist = torch.full((config.iters, R), math.nan, device=device)
    loss1_hist = torch.full((config.iters, R), math.nan, device=device)
    anneal, choose_at = config.anneal_steps, select_step(config) if R > 1 else -1
    kept, summaries, cols = 0, [], slice(None)
    start = time.perf_counter()
    for t in range(config.iters):
        if t == choose_at:  # the restarts have explored; the best one continues alone
            kept, summaries = choose_restart(flow, energy)
            flow, opt = _keep(flow, opt, kept)
            cols = slice(kept, kept + 1)
        beta = beta_schedule(t, anneal)
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(t, config.iters, config.decay)
        z, log_q = flow.rsample_all(B)
        u = energy(z.reshape(-1, D)).reshape(-1, B)
        log_q_mean, u_mean = log_q.mean(-1), u.mean(-1)
        loss = log_q_mean + beta * u_mean  # one objective per restart
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            loss_hist[t, cols] = loss
            loss1_hist[t, cols] = log_q_mean + u_mean
        if (t + 1) % every == 0 or t + 1 == config.iters:
            if progress is not None:
                recent = loss1_hist[max(0, t + 1 - every) : t + 1, cols].mean(0)
                progress(t + 1, recent.min().item(), beta)
            if monitor is not None:
                monitor(t + 1, flow)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock must not stop before the GPU does
    seconds = time.perf_counter() - start
    if flow.restarts > 1:  # the restarts explored to the end (no annealing)
        kept, summaries = choose_restart(flow, energy)
        flow = flow.select(kept)
    loss, loss1 = loss_hist[:, kept].float().cpu(), loss1_hist[:, kept].float().cpu()
    return FitResult(flow, config, loss, loss1, seconds, summaries, kept)


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
