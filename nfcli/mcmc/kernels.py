"""Markov chain Monte Carlo on an energy U (p ∝ exp(−U)): the plain reference samplers.

Three kernels, each run as C independent chains at once (z of shape (C, D)), with a warm-up that
tunes the step and is then thrown away:

- ``rwmh``: random-walk Metropolis–Hastings, z' = z + s·ε, ε ~ N(0, I), accepted with probability
  min(1, exp(U(z) − U(z'))). The step s is tuned per chain during warm-up by Robbins–Monro on
  ln s towards the acceptance rate 0.234 (Roberts, Gelman & Gilks 1997), then held fixed.
- ``hmc``: Hamiltonian Monte Carlo (Neal 2011) with L leapfrog steps of size ε and a unit mass
  matrix, accepted with probability min(1, exp(H(z, r) − H(z', r'))), H = U + ½‖r‖². ε is tuned
  per chain during warm-up by dual averaging towards an acceptance rate δ (Hoffman & Gelman
  2014, "The No-U-Turn Sampler", Algorithm 5; γ = 0.05, t0 = 10, κ = 0.75), then fixed at the
  averaged value; each iteration uses ε times a uniform jitter in [0.5, 1.5].

- ``independence``: independence Metropolis–Hastings with a fitted flow q as the proposal: z' ~ q,
  accepted with probability min(1, w(z')/w(z)), w = p̃/q = exp(−U − ln q), with q's exact
  density (float64): asymptotically exact samples of p whatever q's errors, as fast as q is
  close to p (its acceptance rate is a measure of that).

- ``neutra``: HMC in the flow's base space (Hoffman et al. 2019, "NeuTra-lizing bad geometry in
  Hamiltonian Monte Carlo using neural transport"): on ε with z = f(ε) = T(m + σ·ε) (the base's
  loc and scale, then the layers), the pulled-back density p(f(ε))·|det ∂f/∂ε| has energy
  U(f(ε)) − Σ ln σ − ln|det ∂T|, which is close to a standard one where q is close to p; the
  draws are mapped back through f.

Where U or its gradient is not finite (outside the support), the proposal is rejected. Each keeps
its random stream to its own generator: a seed gives the same chains on every run.

Every kernel takes a ``Watch``: ``progress(done, total)`` is told how many iterations (warm-up
included) are done, every ~0.5% of them, and ``stop()`` is polled after every iteration; once it
says True the kernel returns the draws kept so far (Ctrl-C keeps what is done).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nfcli.energy import Energy
from nfcli.flows import Flow

RWMH_TARGET = 0.234  # the optimal acceptance of a random walk in high dimension
HMC_TARGET = 0.8


@dataclass
class Chains:
    """C chains' kept draws and how they moved."""

    draws: Tensor  # (C, N, D) the draws after warm-up, float64 (N < n when stopped early)
    accept: Tensor  # (C,) the fraction of kept iterations whose proposal was accepted
    step: Tensor  # (C,) the step the warm-up chose (RWMH: s; HMC: ε)
    warmup_done: int = 0  # warm-up iterations run (fewer than asked when stopped early)


def _never() -> bool:
    return False


@dataclass
class Watch:
    """What a kernel reports to and asks of its caller: ``progress(done, total)`` with iterations
    done of the total (warm-up included), called every ``total // 200`` iterations and at the
    end; ``stop()``, polled after each iteration, True to end the run early."""

    progress: Callable[[int, int], None] | None = None
    stop: Callable[[], bool] = field(default=_never)

    def tick(self, done: int, total: int) -> bool:
        """Report iteration ``done`` of ``total``; True when the run should end here."""
        if self.progress is not None and (done % max(total // 200, 1) == 0 or done == total):
            self.progress(done, total)
        return self.stop()


def _chains(draws: Tensor, accepted: Tensor, step: Tensor, kept: int, warmup: int) -> Chains:
    """The first ``kept`` draws of each chain and their acceptance rate."""
    return Chains(draws[:, :kept].clone(), accepted / max(kept, 1), step, warmup)


def _energy(energy: Energy, z: Tensor) -> Tensor:
    """U at each row of z (C, D), float64, +∞ where U is NaN (outside the support)."""
    with torch.no_grad():
        u = energy(z).double()
    return torch.where(torch.isnan(u), math.inf, u)


def _energy_and_grad(energy: Energy, z: Tensor) -> tuple[Tensor, Tensor]:
    """U (C,) and ∂U/∂z (C, D) at each row of z; U = +∞ where U or its gradient is not finite."""
    z = z.detach().requires_grad_(True)
    u = energy(z).double()
    (g,) = torch.autograd.grad(u.sum(), z)
    ok = u.isfinite() & g.isfinite().all(-1)
    return torch.where(ok, u, math.inf).detach(), torch.where(ok[:, None], g, 0.0).detach()


def rwmh(
    energy: Energy,
    init: Tensor,
    n: int,
    warmup: int = 1000,
    seed: int = 0,
    step: float = 0.5,
    watch: Watch | None = None,
) -> Chains:
    """Random-walk Metropolis–Hastings from ``init`` (C, D): ``warmup`` tuning iterations, then
    ``n`` kept. The step s starts at ``step`` and is tuned per chain during warm-up:
    ln s ← ln s + (a − 0.234)/√(t + 1), a the iteration's acceptance (0 or 1)."""
    watch = watch or Watch()
    g = torch.Generator().manual_seed(seed)
    z = init.detach().double().clone()
    C, D = z.shape
    u = _energy(energy, z)
    log_s = torch.full((C,), math.log(step), dtype=torch.float64)
    draws = torch.empty(C, n, D, dtype=torch.float64)
    accepted = torch.zeros(C, dtype=torch.float64)
    t = -1
    for t in range(warmup + n):
        proposal = z + log_s.exp()[:, None] * torch.randn(C, D, generator=g, dtype=torch.float64)
        u_new = _energy(energy, proposal)
        log_alpha = (u - u_new).nan_to_num(nan=-math.inf)  # ∞ − ∞ (both outside): reject
        accept = torch.rand(C, generator=g, dtype=torch.float64).log() < log_alpha
        z = torch.where(accept[:, None], proposal, z)
        u = torch.where(accept, u_new, u)
        if t < warmup:
            log_s += (accept.double() - RWMH_TARGET) / math.sqrt(t + 1)
        else:
            draws[:, t - warmup] = z
            accepted += accept.double()
        if watch.tick(t + 1, warmup + n):
            break
    kept = max(t + 1 - warmup, 0)
    return _chains(draws, accepted, log_s.exp(), kept, min(t + 1, warmup))


def leapfrog(
    energy: Energy, z: Tensor, r: Tensor, grad: Tensor, eps: Tensor, steps: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``steps`` leapfrog steps of size ε (C,) for H = U + ½‖r‖² (z, r, grad: (C, D)): half a step
    of r, full steps of z and r, half a step of r. Returns z', r', U(z'), ∂U/∂z(z')."""
    e = eps[:, None]
    r = r - 0.5 * e * grad
    u = torch.zeros(len(z), dtype=torch.float64)
    for i in range(steps):
        z = z + e * r
        u, grad = _energy_and_grad(energy, z)
        r = r - (e if i < steps - 1 else 0.5 * e) * grad
    return z, r, u, grad


def hmc(
    energy: Energy,
    init: Tensor,
    n: int,
    warmup: int = 1000,
    seed: int = 0,
    steps: int = 10,
    target: float = HMC_TARGET,
    step: float = 0.1,
    watch: Watch | None = None,
) -> Chains:
    """HMC from ``init`` (C, D) with ``steps`` leapfrog steps per iteration: ``warmup`` iterations
    of dual averaging on ln ε (from ``step``), then ``n`` kept at the averaged ε."""
    watch = watch or Watch()
    g = torch.Generator().manual_seed(seed)
    z = init.detach().double().clone()
    C, D = z.shape
    u, grad = _energy_and_grad(energy, z)
    log_eps = torch.full((C,), math.log(step), dtype=torch.float64)
    mu = math.log(10 * step)  # dual averaging: shrink towards 10 ε₀
    h_bar = torch.zeros(C, dtype=torch.float64)
    log_eps_bar = torch.zeros(C, dtype=torch.float64)
    gamma, t0, kappa = 0.05, 10.0, 0.75
    draws = torch.empty(C, n, D, dtype=torch.float64)
    accepted = torch.zeros(C, dtype=torch.float64)
    t = -1
    for t in range(warmup + n):
        if t == warmup and warmup:  # warm-up over: the averaged step from here on
            log_eps = log_eps_bar
        # a jittered step (×0.5–1.5): a fixed trajectory length near a period of some direction
        # of p would return there and not move it (Neal 2011, §5.4.2.2)
        eps = log_eps.exp() * (0.5 + torch.rand(C, generator=g, dtype=torch.float64))
        r = torch.randn(C, D, generator=g, dtype=torch.float64)
        z_new, r_new, u_new, grad_new = leapfrog(energy, z, r, grad, eps, steps)
        h_old = u + 0.5 * (r * r).sum(-1)
        h_new = u_new + 0.5 * (r_new * r_new).sum(-1)
        log_alpha = (h_old - h_new).nan_to_num(nan=-math.inf).clamp(max=0.0)
        accept = torch.rand(C, generator=g, dtype=torch.float64).log() < log_alpha
        z = torch.where(accept[:, None], z_new, z)
        u = torch.where(accept, u_new, u)
        grad = torch.where(accept[:, None], grad_new, grad)
        if t < warmup:
            m = t + 1
            h_bar = (1 - 1 / (m + t0)) * h_bar + (target - log_alpha.exp()) / (m + t0)
            log_eps = mu - math.sqrt(m) / gamma * h_bar
            w = m**-kappa
            log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
        else:
            draws[:, t - warmup] = z
            accepted += accept.double()
        if watch.tick(t + 1, warmup + n):
            break
    kept = max(t + 1 - warmup, 0)
    step_used = log_eps.exp() if kept else log_eps_bar.exp()  # stopped in warm-up: its average
    return _chains(draws, accepted, step_used, kept, min(t + 1, warmup))


def independence(
    flow: Flow,
    energy: Energy,
    chains: int,
    n: int,
    warmup: int = 100,
    seed: int = 0,
    chunk: int = 65536,
    watch: Watch | None = None,
) -> Chains:
    """Independence MH with ``flow`` as the proposal: ``chains`` chains, each started at a draw of
    q, ``warmup`` iterations thrown away, ``n`` kept. Proposals and their exact ln q come from a
    float64 copy of the flow (its own generator), ``chunk`` at a time (chunk // chains
    iterations of every chain); each chain accepts z' with probability
    min(1, exp(ln w(z') − ln w(z))), ln w = −U − ln q (−∞ outside the support)."""
    watch = watch or Watch()
    g = torch.Generator().manual_seed(seed)
    q = flow.float64()

    def propose(m: int) -> tuple[Tensor, Tensor]:
        """m proposals per chain: z (chains, m, D) and ln w (chains, m)."""
        with torch.no_grad():
            z, log_q = q.rsample(chains * m, g)
            log_w = -_energy(energy, z) - log_q
        log_w = torch.where(log_w.isnan(), -math.inf, log_w)
        return z.reshape(chains, m, -1), log_w.reshape(chains, m)

    z, log_w = (x[:, 0] for x in propose(1))  # each chain's start: a draw of q
    total = warmup + n
    draws = torch.empty(chains, n, z.shape[-1], dtype=torch.float64)
    accepted = torch.zeros(chains, dtype=torch.float64)
    block = max(chunk // chains, 1)
    t, stopped = 0, False
    while t < total and not stopped:
        zs, log_ws = propose(min(block, total - t))
        u = torch.rand(log_ws.shape, generator=g, dtype=torch.float64).log()
        for i in range(zs.shape[1]):
            accept = u[:, i] < log_ws[:, i] - log_w
            z = torch.where(accept[:, None], zs[:, i], z)
            log_w = torch.where(accept, log_ws[:, i], log_w)
            if t >= warmup:
                draws[:, t - warmup] = z
                accepted += accept.double()
            t += 1
            if watch.tick(t, total):
                stopped = True
                break
    kept = max(t - warmup, 0)
    return _chains(draws, accepted, torch.full((chains,), math.nan), kept, min(t, warmup))


def _from_base(q: Flow, eps: Tensor) -> tuple[Tensor, Tensor]:
    """f(ε) = T(m + σ·ε) for ε (N, D), and ln|det ∂f/∂ε| = Σ_d ln σ_d + ln|det ∂T| (N,)."""
    z0 = q.base.loc + q.base.log_scale.exp() * eps.unsqueeze(0)  # (1, N, D)
    z, log_det = q.transform(z0)
    return z[0], q.base.log_scale.sum() + log_det[0]


def pulled_back(flow: Flow, energy: Energy) -> Energy:
    """The energy of p pulled back to the flow's standardised base coordinates ε (float64 copy):
    U_f(ε) = U(f(ε)) − Σ_d ln σ_d − ln|det ∂T/∂z₀|, f(ε) = T(m + σ·ε). ε (N, D) → (N,)."""
    q = flow.float64()

    def u(eps: Tensor) -> Tensor:
        z, log_det = _from_base(q, eps)
        return energy(z).double() - log_det

    return Energy(u, energy.names, energy.source)


def push_forward(flow: Flow, eps: Tensor) -> Tensor:
    """f(ε) for ε of shape (..., D), float64, without gradients."""
    q = flow.float64()
    with torch.no_grad():
        return _from_base(q, eps.reshape(-1, eps.shape[-1]))[0].reshape(eps.shape)


def neutra(
    flow: Flow,
    energy: Energy,
    chains: int,
    n: int,
    warmup: int = 500,
    seed: int = 0,
    steps: int = 10,
    watch: Watch | None = None,
) -> Chains:
    """NeuTra HMC: ``hmc`` on ``pulled_back(flow, energy)`` from ``chains`` standard normal starts
    (q's draws, in base coordinates), the kept draws mapped back to z by ``push_forward``."""
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(chains, flow.dim, generator=g, dtype=torch.float64)
    q = flow.float64()  # one copy for both maps
    run = hmc(pulled_back(q, energy), init, n, warmup, seed + 1, steps, watch=watch)
    return Chains(push_forward(q, run.draws), run.accept, run.step, run.warmup_done)
