"""The transforms a flow is built from: one small class per layer type, registered by name.

Every transform acts on R independent flows at once (``--restarts``): its parameters carry a
leading restart axis R, and

    forward(z)  -> (y, ln|det ∂y/∂z|)      z, y: (R, N, D); log-det: (R, N)
    inverse(y)  -> (z, ln|det ∂z/∂y|)      the inverse map and *its* log-det (= minus forward's)

``layers`` says how many of the flow's K layers a transform is (a stack of K planar layers is K;
a coupling is 1; a fixed mixing or a diagonal scaling between layers is 0), and ``steps`` returns
the state after each of them (figures: layers.png). ``spec()`` is the plain dict that rebuilds
the transform with ``build`` (stored in checkpoints as the flow's architecture).

Planar and radial layers (Rezende & Mohamed 2015, arXiv 1505.05770, section 4.1) are applied as
stacks of K layers, planar through a fused hand-written backward pass (``PlanarStack``); the
coupling layers (NICE, RealNVP, neural splines) are one transform each, with their mixing between.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from nfcli.errors import NfcliError
from nfcli.splines import rational_quadratic_spline

REGISTRY: dict[str, type[Transform]] = {}


def register(cls: type[Transform]) -> type[Transform]:
    REGISTRY[cls.name] = cls
    return cls


def build(spec: dict[str, Any], dim: int, restarts: int = 1) -> Transform:
    """The transform a ``spec()`` dict describes, for ``restarts`` flows in ``dim`` dimensions."""
    options = dict(spec)
    kind = options.pop("type")
    if kind not in REGISTRY:
        raise NfcliError(
            f"Unknown transform type {kind!r} in the flow's architecture. Known types: "
            f"{', '.join(sorted(REGISTRY))}."
        )
    return REGISTRY[kind](dim, restarts, **options)


class Transform(nn.Module):
    """The interface every layer type follows (see the module docstring)."""

    name: ClassVar[str]
    layers: int = 1

    def __init__(self, dim: int, restarts: int = 1) -> None:
        super().__init__()
        self.dim, self.restarts = dim, restarts

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def steps(self, z: Tensor) -> list[Tensor]:
        """The state after each of this transform's ``layers`` layers (z: (R, N, D))."""
        return [self(z)[0]] if self.layers else []

    def options(self) -> dict[str, Any]:
        """The constructor's keyword arguments, as plain values."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, **self.options()}


def _per_restart(fn: Callable[[Tensor, int], tuple[Tensor, Tensor]], y: Tensor):
    """Apply fn(y[r], r) -> ((N, D), (N,)) for each restart r and stack: ((R, N, D), (R, N))."""
    parts = [fn(y[r], r) for r in range(y.shape[0])]
    return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])


# --- planar: f(z) = z + û·tanh(wᵀz + b) -------------------------------------------------------


def planar_u_hat(u: Tensor, w: Tensor) -> Tensor:
    """û = u + [m(wᵀu) − wᵀu]·w/‖w‖², m(x) = −1 + softplus(x), so that wᵀû = m(wᵀu) > −1.

    Works on stacked parameters: u, w of shape (..., D).
    """
    wu = (w * u).sum(-1, keepdim=True)
    w_sq = (w * w).sum(-1, keepdim=True).clamp_min(1e-12)
    return u + (softplus(wu) - 1.0 - wu) * w / w_sq


def planar(z: Tensor, u_hat: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One planar layer: f(z) = z + û·h(wᵀz + b), h = tanh.

    ln|det ∂f/∂z| = ln|1 + ûᵀψ(z)|, ψ(z) = h′(wᵀz + b)·w, so ln|det| = ln(1 + (1 − h²)·wᵀû),
    which is O(D) and non-negative inside the log because wᵀû ≥ −1 (see ``planar_u_hat``); wᵀû
    is clamped at −1 because rounding in û can put it a hair below when |wᵀu| is large.
    z: (N, D); u_hat, w: (D,); b: scalar. Returns (f(z), ln|det|) of shapes (N, D), (N,).
    """
    h = torch.tanh(z @ w + b)
    log_det = torch.log1p((1.0 - h * h) * (w @ u_hat).clamp_min(-1.0))
    return z + h.unsqueeze(-1) * u_hat, log_det


def planar_inverse(y: Tensor, u_hat: Tensor, w: Tensor, b: Tensor, max_iter: int = 300) -> Tensor:
    """z with planar(z) = y. Along w the layer is the scalar map α ↦ α + s·tanh(α + b), α = wᵀz,
    s = wᵀû ≥ −1, which is non-decreasing; so α solves g(α) = α + s·tanh(α + b) − wᵀy = 0 in the
    bracket [wᵀy − |s|, wᵀy + |s|]. Newton steps that stay inside the shrinking bracket and at
    least halve |g| are taken; any other step bisects (so each step halves |g| or the bracket).
    A row is done when its bracket or its Newton step is below rounding, 4ε(1 + |α| + |s|).
    Then z = y − û·tanh(α + b). Batched over the rows of y (N, D)."""
    s = (w @ u_hat).clamp_min(-1.0)
    c = y @ w
    eps = torch.finfo(y.dtype).eps
    lo, hi = c - s.abs(), c + s.abs()
    alpha = c - s * torch.tanh(c + b)
    tol = 4 * eps * (1 + c.abs() + 2 * s.abs())  # ≥ 4ε(1 + |α| + |s|) for α in the bracket
    g_before = torch.full_like(c, math.inf)
    for _ in range(max_iter):
        t = torch.tanh(alpha + b)
        g = alpha + s * t - c
        lo, hi = torch.where(g < 0, alpha, lo), torch.where(g > 0, alpha, hi)
        step = g / (1.0 + s * (1.0 - t * t)).clamp_min(eps)
        done = (hi - lo <= tol) | (step.abs() <= tol) | (g == 0)
        if bool(done.all()):
            break
        newton = alpha - step
        use_newton = (newton > lo) & (newton < hi) & (g.abs() <= 0.5 * g_before)
        alpha = torch.where(done, alpha, torch.where(use_newton, newton, (lo + hi) / 2))
        g_before = g.abs()
    else:
        raise RuntimeError("planar_inverse did not converge")  # cannot happen: see the bisection
    return y - torch.tanh(alpha + b).unsqueeze(-1) * u_hat


# --- radial: f(z) = z + β·h(α, r)(z − z0), h = 1/(α + r) ----------------------------------------


def radial_alpha_beta(alpha_raw: Tensor, beta_raw: Tensor) -> tuple[Tensor, Tensor]:
    """α = softplus(α′) > 0 and β = −α + softplus(β′) ≥ −α: the radial layer's invertibility."""
    alpha = softplus(alpha_raw)
    return alpha, softplus(beta_raw) - alpha


def radial(z: Tensor, z0: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """One radial layer: f(z) = z + β·h(α, r)(z − z0), r = ‖z − z0‖, h = 1/(α + r).

    |det J| = [1 + βh]^{D−1}·[1 + βh + βh′r] with h′ = −1/(α + r)², and
    1 + βh + βh′r = 1 + βα/(α + r)² = 1 + βαh², both factors ≥ 0 when β ≥ −α.
    z: (..., N, D); z0: (..., D); alpha, beta: (...). Returns f(z) (..., N, D), ln|det| (..., N).
    """
    alpha, beta = alpha.unsqueeze(-1), beta.unsqueeze(-1)
    diff = z - z0.unsqueeze(-2)
    h = 1.0 / (alpha + torch.linalg.vector_norm(diff, dim=-1))
    bh = beta * h
    log_det = (z.shape[-1] - 1) * torch.log1p(bh) + torch.log1p(beta * alpha * h * h)
    return z + bh.unsqueeze(-1) * diff, log_det


def radial_inverse(y: Tensor, z0: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """z with radial(z) = y. With ρ = ‖y − z0‖, r = ‖z − z0‖ solves ρ = r(1 + β/(α + r)), i.e.
    r² + (α + β − ρ)r − ρα = 0, whose non-negative root is taken in the form that does not cancel;
    then z = z0 + (y − z0)/(1 + β/(α + r)). Batched over the rows of y (N, D)."""
    d = y - z0
    rho = torch.linalg.vector_norm(d, dim=-1)
    B = alpha + beta - rho
    root = torch.sqrt(B * B + 4 * rho * alpha)
    r = torch.where(B > 0, 2 * rho * alpha / (B + root).clamp_min(1e-300), (root - B) / 2)
    scale = 1.0 + beta / (alpha + r)
    return z0 + d / torch.where(rho > 0, scale, 1.0).unsqueeze(-1)


class PlanarStack(torch.autograd.Function):
    """K planar layers for R independent flows at once: the fast path, with a hand-written backward.

    It computes exactly what applying ``planar`` K times to each flow computes (``tests/
    test_flows.py`` checks values and gradients against autograd through ``planar``), in about three
    fused operations per layer each way instead of the ~25 that autograd records, whose bookkeeping,
    not arithmetic, sets the speed at 2-D sizes. With a_k = w_kᵀz_{k−1} + b_k, h_k = tanh a_k,
    s_k = w_kᵀû_k, d_k = 1 + (1 − h_k²)s_k, and incoming gradients ḡ_z of z_K and ḡ_ℓ of Σ ln d_k:
        ḡ_a = (ḡ_z·û)(1 − h²) − 2 s h (1 − h²) ḡ_ℓ/d,   ḡ_s = Σ_n ḡ_ℓ(1 − h²)/d,
        ∂û = Σ_n h ḡ_z + ḡ_s w,   ∂w = Σ_n ḡ_a z_{k−1} + ḡ_s û,   ∂b = Σ_n ḡ_a,
    and ḡ_z ← ḡ_z + ḡ_a wᵀ passes the gradient to layer k − 1.
    Shapes: z (R, N, D); u_hat, w (R, K, D); b (R, K). Returns z_K (R, N, D), Σ ln|det| (R, N).
    Internally z is kept feature-major, (R, D, N), so that wᵀz is a (1×D)·(D×N) product per flow
    and the update z + û·h is one broadcast multiply-add along contiguous N: with R flows this is
    several times faster than (R, N, D), whose batched products have an inner size of D.
    """

    @staticmethod
    def forward(ctx, z: Tensor, u_hat: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        R, N, D = z.shape
        K = w.shape[1]
        zs = z.new_empty(K + 1, R, D, N)  # z_0 … z_K, each layer written in place: no copies
        hs = z.new_empty(K, R, 1, N)
        zs[0].copy_(z.transpose(1, 2))
        layers = zip(
            w.unsqueeze(-2).unbind(1),
            u_hat.unsqueeze(-1).unbind(1),
            b[..., None, None].unbind(1),
            strict=True,
        )
        z_k, h_k = zs.unbind(0), hs.unbind(0)
        for k, (w_k, u_k, b_k) in enumerate(layers):  # (R, 1, D), (R, D, 1), (R, 1, 1)
            torch.tanh(torch.baddbmm(b_k, w_k, z_k[k]), out=h_k[k])
            torch.addcmul(z_k[k], u_k, h_k[k], out=z_k[k + 1])
        h = hs.squeeze(2)  # (K, R, N)
        s_raw = (w * u_hat).sum(-1).T.unsqueeze(-1)  # (K, R, 1)
        s = s_raw.clamp_min(-1.0)  # as in ``planar``
        ctx.save_for_backward(zs, h, u_hat, w, s, s_raw >= -1.0)
        return zs[K].transpose(1, 2).clone(), torch.log1p((1.0 - h * h) * s).sum(0)

    @staticmethod
    def backward(ctx, g_z: Tensor, g_ld: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        zs, h, u_hat, w, s, unclamped = ctx.saved_tensors  # zs: (K + 1, R, D, N)
        K = h.shape[0]
        dh = 1.0 - h * h
        t = g_ld / (1.0 + dh * s) * dh  # ḡ_ℓ(1 − h²)/d
        g_s = t.sum(-1, keepdim=True) * unclamped  # (K, R, 1)
        g_as = (-2.0 * s * h * t).unsqueeze(2)  # (K, R, 1, N): the log-det part of ḡ_a
        g_out = torch.empty_like(zs)  # g_out[k + 1]: the gradient of z_{k+1}
        g_out[K].copy_(g_z.transpose(1, 2))
        layers = zip(
            u_hat.unsqueeze(-2).unbind(1),
            w.unsqueeze(-1).unbind(1),
            dh.unsqueeze(2).unbind(0),
            g_as.unbind(0),
            strict=True,
        )
        g_k = g_out.unbind(0)
        for k, (u_k, w_k, dh_k, g_a) in reversed(list(enumerate(layers))):  # (R,1,D), (R,D,1)
            g_a.addcmul_(torch.bmm(u_k, g_k[k + 1]), dh_k)
            torch.addcmul(g_k[k + 1], w_k, g_a, out=g_k[k])
        g_s_rk = g_s.squeeze(-1).T.unsqueeze(-1)  # (R, K, 1)
        # Σ_n over contiguous N: multiply-and-sum is ~6× faster here than a batched matmul
        g_u = (g_out[1:] * h.unsqueeze(2)).sum(-1).transpose(0, 1) + g_s_rk * w
        g_w = (zs[:K] * g_as).sum(-1).transpose(0, 1) + g_s_rk * u_hat
        return g_out[0].transpose(1, 2), g_u, g_w, g_as.squeeze(2).sum(-1).T


COLUMNS_UP_TO = 8  # ``planar_chain`` keeps z as D columns up to this D


def planar_chain(z: Tensor, u_hat: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """K planar layers (``planar``) for R flows in plain differentiable operations: what
    ``PlanarStack`` computes, to rounding, written for torch.compile to trace and fuse (the
    training loop's compiled flow, ``nfcli.compiled.choose_flow``); eager, its ~10 operations per
    layer and their autograd records make it slower than ``PlanarStack``. Up to COLUMNS_UP_TO
    dimensions z is kept as D columns (R, N), so that every operation runs along the batch, which
    the compiled loops vectorise (2-D, K = 32: 0.37 ms a step at a batch of 256 and 0.55 at 1024,
    against 0.47 and 1.1 with z as (R, N, D) and its inner loops over D = 2).
    Shapes: z (R, N, D); u_hat, w (R, K, D); b (R, K). Returns z_K (R, N, D), Σ ln|det| (R, N).
    """
    s = (w * u_hat).sum(-1).clamp_min(-1.0)  # (R, K), as in ``planar``
    log_det = z.new_zeros(z.shape[:-1])
    if z.shape[-1] > COLUMNS_UP_TO:
        for k in range(w.shape[1]):
            h = torch.tanh((z * w[:, k, None]).sum(-1) + b[:, k, None])  # (R, N)
            log_det = log_det + torch.log1p((1.0 - h * h) * s[:, k, None])
            z = z + h.unsqueeze(-1) * u_hat[:, k, None]
        return z, log_det
    cols = z.unbind(-1)  # D of (R, N)
    for k in range(w.shape[1]):
        a = b[:, k, None]
        for d, z_d in enumerate(cols):
            a = a + z_d * w[:, k, d, None]
        h = torch.tanh(a)
        log_det = log_det + torch.log1p((1.0 - h * h) * s[:, k, None])
        cols = [z_d + h * u_hat[:, k, d, None] for d, z_d in enumerate(cols)]
    return torch.stack(cols, -1), log_det


@register
class Planar(Transform):
    """K planar layers f(z) = z + û·tanh(wᵀz + b) (``planar``), stacked: u, w (R, K, D), b (R, K).
    Training goes through ``PlanarStack``; the inverse solves each layer's scalar equation."""

    name = "planar"

    def __init__(self, dim: int, restarts: int = 1, K: int = 32, init_scale: float = 0.25):
        super().__init__(dim, restarts)
        self.layers, self.init_scale = K, init_scale
        self.u = nn.Parameter(torch.randn(restarts, K, dim) * init_scale)
        self.w = nn.Parameter(torch.randn(restarts, K, dim) * init_scale)
        self.init_offset()

    def init_offset(self) -> None:
        """The layers' offsets b, (R, K), zero at first."""
        self.b = nn.Parameter(torch.zeros(self.restarts, self.layers))

    def options(self) -> dict[str, Any]:
        return {"K": self.layers, "init_scale": self.init_scale}

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():  # plain operations, which torch.compile can fuse
            return planar_chain(z, planar_u_hat(self.u, self.w), self.w, self.b)
        return PlanarStack.apply(z, planar_u_hat(self.u, self.w), self.w, self.b)

    def steps(self, z: Tensor) -> list[Tensor]:
        u_hat = planar_u_hat(self.u, self.w)
        zs = [z]
        for k in range(self.layers):
            zs.append(
                torch.stack(
                    [
                        planar(zs[-1][r], u_hat[r, k], self.w[r, k], self.b[r, k])[0]
                        for r in range(z.shape[0])
                    ]
                )
            )
        return zs[1:]

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        u_hat = planar_u_hat(self.u, self.w)

        def one(y: Tensor, r: int) -> tuple[Tensor, Tensor]:
            log_det = []
            for k in reversed(range(self.layers)):
                y = planar_inverse(y, u_hat[r, k], self.w[r, k], self.b[r, k])
                log_det.append(planar(y, u_hat[r, k], self.w[r, k], self.b[r, k])[1])
            return y, -torch.stack(log_det).sum(0)

        return _per_restart(one, y)


@register
class CentredPlanar(Planar):
    """Planar layers about learnt centres c (R, K, D): f(z) = z + û·tanh(wᵀ(z − c)), i.e.
    ``planar`` with b = −wᵀc. The same family of maps, parametrised so that w → 0 is smooth.

    With b free, a layer whose w is small while wᵀû stays finite (û = m(wᵀu)/w in 1-D) shifts z
    by ~û·tanh(b) ∝ 1/|w|, and the gradient in w grows as 1/w²; a 1-D fit that reaches such a
    layer stays there (the double well x⁴/4 − x²: w ~ 3e-3, û ~ 100 by step 250, the fit ending
    at F = 0.58 against the optimum −2.03). About a centre, û·tanh(wᵀ(z − c)) is bounded by
    |wᵀû|·‖z − c‖ and tends to the linear map û wᵀ(z − c) as w → 0, with bounded gradients.
    nfcli's default for 1-D targets (``nfcli.flows.architecture``); 2-D keeps ``Planar``, the
    paper's parametrisation, on which its tables were measured."""

    name = "centred_planar"

    def init_offset(self) -> None:
        """The layers' centres c, (R, K, D), zero at first (b = 0, as ``Planar`` starts)."""
        self.c = nn.Parameter(torch.zeros(self.restarts, self.layers, self.dim))

    @property
    def b(self) -> Tensor:  # (R, K): the offsets b = −wᵀc that ``Planar``'s methods use
        return -(self.w * self.c).sum(-1)


@register
class Radial(Transform):
    """K radial layers f(z) = z + β·h(α, r)(z − z0) (``radial``): centres z0 (R, K, D) and raw
    α′, β′ (R, K)."""

    name = "radial"

    def __init__(self, dim: int, restarts: int = 1, K: int = 32, init_scale: float = 0.25):
        super().__init__(dim, restarts)
        self.layers, self.init_scale = K, init_scale
        self.z0 = nn.Parameter(torch.randn(restarts, K, dim) * init_scale)
        self.alpha_raw = nn.Parameter(torch.zeros(restarts, K))
        self.beta_raw = nn.Parameter(torch.zeros(restarts, K))

    def options(self) -> dict[str, Any]:
        return {"K": self.layers, "init_scale": self.init_scale}

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta = radial_alpha_beta(self.alpha_raw, self.beta_raw)
        log_det = []
        for z0, a, b in zip(self.z0.unbind(1), alpha.unbind(1), beta.unbind(1), strict=True):
            z, ld = radial(z, z0, a, b)
            log_det.append(ld)
        return z, torch.stack(log_det).sum(0)

    def steps(self, z: Tensor) -> list[Tensor]:
        alpha, beta = radial_alpha_beta(self.alpha_raw, self.beta_raw)
        zs = [z]
        for k in range(self.layers):
            zs.append(radial(zs[-1], self.z0[:, k], alpha[:, k], beta[:, k])[0])
        return zs[1:]

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta = radial_alpha_beta(self.alpha_raw, self.beta_raw)

        def one(y: Tensor, r: int) -> tuple[Tensor, Tensor]:
            z0, log_det = self.z0[r], []
            for k in reversed(range(self.layers)):
                y = radial_inverse(y, z0[k], alpha[r, k], beta[r, k])
                log_det.append(radial(y, z0[k], alpha[r, k], beta[r, k])[1])
            return y, -torch.stack(log_det).sum(0)

        return _per_restart(one, y)


# --- coupling layers: y₁ = x₁, y₂ = g(x₂; θ(x₁)) -----------------------------------------------


class BatchedMLP(nn.Module):
    """R independent MLPs with the layer sizes ``sizes`` and SiLU between layers: weights
    (R, in, out), biases (R, 1, out), applied to x (R, N, in) → (R, N, out) with one batched
    product per layer. Hidden layers start as torch.nn.Linear does (U(±1/√in)); the output layer
    starts at zero, so that a coupling starts as the identity."""

    def __init__(self, restarts: int, sizes: list[int]) -> None:
        super().__init__()
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            last = i == len(sizes) - 2
            bound = 0.0 if last else 1 / math.sqrt(n_in)
            self.weights.append(nn.Parameter((torch.rand(restarts, n_in, n_out) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(restarts, 1, n_out) * 2 - 1) * bound))

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < n - 1:
                x = nn.functional.relu(x)
        return x


class Coupling(Transform):
    """A coupling layer (Dinh et al. 2014): split z = (x₁, x₂) at d₁ = ⌊D/2⌋, keep x₁ and
    transform x₂ elementwise by an invertible g whose parameters θ = MLP(x₁) (``BatchedMLP``):

        y₁ = x₁,   y₂ = g(x₂; θ(x₁)),   ln|det ∂y/∂z| = Σ_i ln|g′(x₂ᵢ; θᵢ)|,

    triangular Jacobian, so exact and O(D); the inverse is g⁻¹ with the same θ(y₁) = θ(x₁).
    Subclasses give g (``element``) and its number of parameters per element (``n_params``).
    Mixing layers between couplings (``Reverse``, ``Permutation``, ``Orthogonal``) change which
    coordinates are kept."""

    n_params: ClassVar[int]

    def __init__(self, dim: int, restarts: int = 1, hidden: list[int] | tuple[int, ...] = (64, 64)):
        super().__init__(dim, restarts)
        if dim < 2:
            raise NfcliError(
                f"A {self.name} layer splits the variables in two, so it needs at least 2 of "
                "them; this target has 1. Use --flow planar, radial or affine for 1-D targets."
            )
        self.d1, self.hidden = dim // 2, [int(h) for h in hidden]
        self.net = BatchedMLP(restarts, [self.d1, *self.hidden, (dim - self.d1) * self.n_params])

    def options(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden)}

    def element(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """g(x; θ) (or g⁻¹) and ln|g′| (of the map applied) elementwise: x (...), θ (..., P)."""
        raise NotImplementedError

    def _couple(self, z: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        x1, x2 = z[..., : self.d1], z[..., self.d1 :]
        theta = self.net(x1).unflatten(-1, (self.dim - self.d1, self.n_params))
        y2, log_det = self.element(x2, theta, inverse)
        return torch.cat([x1, y2], -1), log_det.sum(-1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(z, inverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(y, inverse=True)


@register
class AdditiveCoupling(Coupling):
    """NICE (Dinh, Krueger & Bengio 2014, arXiv 1410.8516): g(x; t) = x + t, volume-preserving
    (ln|det| = 0); NICE's final diagonal scaling (``ElementwiseAffine``) sets the volume."""

    name, n_params = "additive_coupling", 1

    def element(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        t = theta[..., 0]
        return (x - t if inverse else x + t), torch.zeros_like(x)


@register
class AffineCoupling(Coupling):
    """RealNVP (Dinh, Sohl-Dickstein & Bengio 2016, arXiv 1605.08803): g(x; s, t) = x·eˢ + t with
    the log-scale bounded smoothly, s = c·tanh(ŝ/c), c = ``SCALE_BOUND`` (a layer scales by at
    most e^c ≈ 7.4 either way), so that one step cannot blow the scale up; ln|g′| = s."""

    name, n_params = "affine_coupling", 2
    SCALE_BOUND = 2.0

    def element(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        c = self.SCALE_BOUND
        s, t = c * torch.tanh(theta[..., 0] / c), theta[..., 1]
        if inverse:
            return (x - t) * torch.exp(-s), -s
        return x * torch.exp(s) + t, s


@register
class SplineCoupling(Coupling):
    """Neural spline flow (Durkan, Bekasov, Murray & Papamakarios 2019, arXiv 1906.04032): g is a
    monotone rational-quadratic spline with ``bins`` bins on [−bound, bound] and the identity
    outside (``nfcli.splines.rational_quadratic_spline``); θ holds B widths, B heights and B − 1
    interior derivatives, offset so that θ = 0 is the identity."""

    name = "spline_coupling"

    def __init__(
        self,
        dim: int,
        restarts: int = 1,
        hidden: list[int] | tuple[int, ...] = (64, 64),
        bins: int = 8,
        bound: float = 5.0,
    ):
        self.bins, self.bound = int(bins), float(bound)
        self.n_params = 3 * self.bins - 1
        super().__init__(dim, restarts, hidden)

    def options(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "bins": self.bins, "bound": self.bound}

    def element(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        B = self.bins
        w, h, d = theta[..., :B], theta[..., B : 2 * B], theta[..., 2 * B :] + _UNIT_DERIVATIVE
        return rational_quadratic_spline(x, w, h, d, self.bound, inverse)


_UNIT_DERIVATIVE = math.log(math.expm1(1 - 1e-3))  # softplus(this) + 1e-3 = 1


# --- mixing between couplings, and the affine layers -----------------------------------------


@register
class Reverse(Transform):
    """y = z in reverse order: the kept and the transformed halves of couplings alternate."""

    name, layers = "reverse", 0

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.flip(-1), z.new_zeros(z.shape[:-1])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self(y)


@register
class Permutation(Transform):
    """y = z permuted by a fixed random permutation per restart (buffer ``perm`` (R, D)), as
    between NICE's couplings; ln|det| = 0."""

    name, layers = "permutation", 0

    def __init__(self, dim: int, restarts: int = 1) -> None:
        super().__init__(dim, restarts)
        self.register_buffer("perm", torch.stack([torch.randperm(dim) for _ in range(restarts)]))

    def _gather(self, z: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index[:, None].expand(-1, z.shape[1], -1)
        return z.gather(-1, index), z.new_zeros(z.shape[:-1])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._gather(z, self.perm)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._gather(y, self.perm.argsort(-1))


@register
class Orthogonal(Transform):
    """y = Q z with a fixed random rotation Q per restart, the Cayley transform of a random
    skew-symmetric A = S − Sᵀ (buffer ``S`` (R, D, D), S ~ N(0, 1)): Q = (I + A)⁻¹(I − A).
    Q is computed in the flow's precision at each use, so it is orthogonal to rounding in float64
    too (a stored Q would keep float32's 1e-7); ln|det| = 0, and the inverse is Qᵀ. It mixes
    every coordinate into both halves of the next coupling."""

    name, layers = "orthogonal", 0

    def __init__(self, dim: int, restarts: int = 1) -> None:
        super().__init__(dim, restarts)
        self.register_buffer("S", torch.randn(restarts, dim, dim))

    def matrix(self) -> Tensor:
        """Q (R, D, D), solved once per value of S (the same tensor at the same version) and
        kept: the solve costs O(D³), 0.1–0.2 s at D = 1,600, and ran for every layer at every
        step (a 1,600-D fit had not finished after 45 minutes). The kept Q is the solve's own
        result, so every use is bit-identical to solving again; traced by torch.compile it is
        solved in the graph, as before."""
        S = self.S
        if torch.compiler.is_compiling():
            return self._solve(S)
        kept = getattr(self, "_kept", None)
        if kept is None or kept[0] is not S or kept[1] != S._version:
            kept = self._kept = (S, S._version, self._solve(S))
        return kept[2]

    @staticmethod
    def _solve(S: Tensor) -> Tensor:
        a = S - S.transpose(1, 2)
        eye = torch.eye(S.shape[-1], dtype=a.dtype, device=a.device)
        return torch.linalg.solve(eye + a, eye - a)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return torch.bmm(z, self.matrix().transpose(1, 2)), z.new_zeros(z.shape[:-1])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return torch.bmm(y, self.matrix()), y.new_zeros(y.shape[:-1])


@register
class ElementwiseAffine(Transform):
    """y = z·eˢ + m with learnt s, m (R, D): NICE's final diagonal scaling (with a shift), and
    the scale of coupling flows, whose base is a standard normal; ln|det| = Σ s. ``scale`` is
    the initial eˢ."""

    name, layers = "elementwise_affine", 0

    def __init__(self, dim: int, restarts: int = 1, scale: float = 1.0) -> None:
        super().__init__(dim, restarts)
        self.scale = float(scale)
        self.shift = nn.Parameter(torch.zeros(restarts, dim))
        self.log_scale = nn.Parameter(torch.full((restarts, dim), math.log(scale)))

    def options(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale.unsqueeze(1)
        log_det = self.log_scale.sum(-1, keepdim=True).expand(-1, z.shape[1])
        return z * s.exp() + self.shift.unsqueeze(1), log_det

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale.unsqueeze(1)
        log_det = self.log_scale.sum(-1, keepdim=True).expand(-1, y.shape[1])
        return (y - self.shift.unsqueeze(1)) * torch.exp(-s), -log_det


@register
class Affine(Transform):
    """y = L z + m with L lower triangular, positive diagonal: L = tril(A, −1) + diag(e^ℓ), the
    Cholesky factor of a full covariance (on a standard normal base, q = N(m, LLᵀ)).
    ln|det| = Σ ℓ, exact; the inverse is a triangular solve. A (R, D, D), ℓ, m (R, D); starts
    as the identity."""

    name = "affine"

    def __init__(self, dim: int, restarts: int = 1) -> None:
        super().__init__(dim, restarts)
        self.shift = nn.Parameter(torch.zeros(restarts, dim))
        self.log_diag = nn.Parameter(torch.zeros(restarts, dim))
        self.lower = nn.Parameter(torch.zeros(restarts, dim, dim))

    def matrix(self) -> Tensor:
        """L (R, D, D)."""
        return torch.tril(self.lower, -1) + torch.diag_embed(self.log_diag.exp())

    def _log_det(self, z: Tensor) -> Tensor:
        return self.log_diag.sum(-1, keepdim=True).expand(-1, z.shape[1])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.baddbmm(self.shift.unsqueeze(1), z, self.matrix().transpose(1, 2))
        return y, self._log_det(z)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        lt = self.matrix().transpose(1, 2)  # z Lᵀ = y − m
        z = torch.linalg.solve_triangular(lt, y - self.shift.unsqueeze(1), upper=True, left=False)
        return z, -self._log_det(y)


@register
class FixedAffine(Transform):
    """y = L z + m with L lower triangular (positive diagonal) and m held fixed, not learnt: the
    Gaussian start N(m, LLᵀ) of a fit from the mode (``nfcli.mode.gaussian_start``), placed after
    every learnt layer so that those work in whitened coordinates. Learnt in the target's own
    units, m and L would be moved by Adam by about the learning rate per step whatever their
    scale: 5e-3 is 700 sds of a regression coefficient whose sd is 7e-6. ln|det| = Σ ln L_ii.
    Buffers ``shift`` (R, D) and ``scale_tril`` (R, D, D), set by ``Flow.start_at``; the
    identity until then."""

    name = "fixed_affine"

    def __init__(self, dim: int, restarts: int = 1) -> None:
        super().__init__(dim, restarts)
        self.register_buffer("shift", torch.zeros(restarts, dim))
        self.register_buffer("scale_tril", torch.eye(dim).expand(restarts, dim, dim).clone())

    def _log_det(self, z: Tensor) -> Tensor:
        log_diag = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1, keepdim=True)
        return log_diag.expand(-1, z.shape[1])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.baddbmm(self.shift.unsqueeze(1), z, self.scale_tril.transpose(1, 2))
        return y, self._log_det(z)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        lt = self.scale_tril.transpose(1, 2)  # z Lᵀ = y − m
        z = torch.linalg.solve_triangular(lt, y - self.shift.unsqueeze(1), upper=True, left=False)
        return z, -self._log_det(y)
