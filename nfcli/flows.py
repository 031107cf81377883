"""Planar and radial flows (Rezende & Mohamed 2015, arXiv 1505.05770, section 4.1).

A flow pushes z0 ~ q0 = N(loc, diag(scale²)) through K invertible layers,
z_K = f_K ∘ … ∘ f_1(z0), and

    ln q_K(z_K) = ln q0(z0) − Σ_k ln |det ∂f_k/∂z_{k−1}|.

Each layer is one pure function returning ``(z, log_det)``; the constraint that keeps it invertible
is one more function of the raw parameters. The modules below only hold the K layers' parameters
stacked in (K, D) tensors and apply the functions in order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

FLOW_TYPES = ("planar", "radial")


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
    s = wᵀû ≥ −1, which is non-decreasing; so α solves wᵀy = α + s·tanh(α + b) in the bracket
    [wᵀy − |s|, wᵀy + |s|]. Newton steps that stay inside the shrinking bracket, with a bisection
    every third step (so the bracket at least halves every three steps), find it to rounding.
    Then z = y − û·tanh(α + b). Batched over the rows of y (N, D)."""
    s = (w @ u_hat).clamp_min(-1.0)
    c = y @ w
    eps = torch.finfo(y.dtype).eps
    lo, hi = c - s.abs(), c + s.abs()
    alpha = c - s * torch.tanh(c + b)
    for i in range(max_iter):
        t = torch.tanh(alpha + b)
        g = alpha + s * t - c
        lo, hi = torch.where(g < 0, alpha, lo), torch.where(g > 0, alpha, hi)
        lo, hi = torch.where(g == 0, alpha, lo), torch.where(g == 0, alpha, hi)
        if bool((hi - lo <= 4 * eps * (1 + alpha.abs() + s.abs())).all()):
            break
        newton = alpha - g / (1.0 + s * (1.0 - t * t)).clamp_min(eps)
        use_newton = (newton > lo) & (newton < hi) & torch.tensor(i % 3 != 2)
        alpha = torch.where(use_newton, newton, (lo + hi) / 2)
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


# --- the learnable pieces ------------------------------------------------------------------------


class DiagonalGaussian(nn.Module):
    """q0(z0) = N(z0; loc, diag(exp(log_scale)²)) for R flows: loc, log_scale of shape (R, D)."""

    def __init__(self, dim: int, scale: float = 1.0, restarts: int = 1) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(restarts, dim))
        self.log_scale = nn.Parameter(torch.full((restarts, dim), math.log(scale)))

    def rsample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """z0 (R, n, D) = loc + σ·ε and ln q0(z0) (R, n) = −½‖ε‖² − Σ ln σ − (D/2) ln 2π."""
        R, D = self.loc.shape
        eps = torch.randn(
            R, n, D, generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )
        z = self.loc.unsqueeze(1) + self.log_scale.exp().unsqueeze(1) * eps
        return z, self._log_prob_of_eps(eps)

    def log_prob(self, z: Tensor) -> Tensor:
        """ln q0(z) for z of shape (R, N, D) → (R, N)."""
        return self._log_prob_of_eps(
            (z - self.loc.unsqueeze(1)) * torch.exp(-self.log_scale).unsqueeze(1)
        )

    def _log_prob_of_eps(self, eps: Tensor) -> Tensor:
        """ln q0 = −½‖ε‖² − Σ ln σ − (D/2) ln 2π at the standardised point ε = (z − loc)/σ."""
        log_sigma = self.log_scale.sum(-1, keepdim=True)
        return -0.5 * (eps * eps).sum(-1) - log_sigma - 0.5 * eps.shape[-1] * _LOG_2PI


_LOG_2PI = math.log(2 * math.pi)


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


class PlanarFlow(nn.Module):
    """K planar layers of R flows, parameters stacked as u, w: (R, K, D) and b: (R, K)."""

    def __init__(self, dim: int, K: int, init_scale: float, restarts: int = 1) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(restarts, K, dim) * init_scale)
        self.w = nn.Parameter(torch.randn(restarts, K, dim) * init_scale)
        self.b = nn.Parameter(torch.zeros(restarts, K))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (R, N, D) → (z_K (R, N, D), Σ ln|det J_k| (R, N))."""
        return PlanarStack.apply(z, planar_u_hat(self.u, self.w), self.w, self.b)

    def steps(self, z: Tensor, r: int = 0) -> list[Tensor]:
        """Flow r's z_0, z_1, …, z_K for z_0 = z (N, D), layer by layer through ``planar``."""
        u_hat, w, b = planar_u_hat(self.u[r], self.w[r]), self.w[r], self.b[r]
        zs = [z]
        for k in range(w.shape[0]):
            zs.append(planar(zs[-1], u_hat[k], w[k], b[k])[0])
        return zs

    def inverse(self, y: Tensor, r: int = 0) -> tuple[Tensor, Tensor]:
        """Flow r's z0 with forward(z0) = y (N, D), and Σ_k ln|det J_k| along the way."""
        u_hat, w, b = planar_u_hat(self.u[r], self.w[r]), self.w[r], self.b[r]
        log_det = []
        for k in reversed(range(w.shape[0])):
            y = planar_inverse(y, u_hat[k], w[k], b[k])
            log_det.append(planar(y, u_hat[k], w[k], b[k])[1])
        return y, torch.stack(log_det).sum(0)


class RadialFlow(nn.Module):
    """K radial layers of R flows: centres z0 (R, K, D) and raw α′, β′ (R, K)."""

    def __init__(self, dim: int, K: int, init_scale: float, restarts: int = 1) -> None:
        super().__init__()
        self.z0 = nn.Parameter(torch.randn(restarts, K, dim) * init_scale)
        self.alpha_raw = nn.Parameter(torch.zeros(restarts, K))
        self.beta_raw = nn.Parameter(torch.zeros(restarts, K))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (R, N, D) → (z_K (R, N, D), Σ ln|det J_k| (R, N))."""
        alpha, beta = radial_alpha_beta(self.alpha_raw, self.beta_raw)
        log_det = []
        for z0, a, b in zip(self.z0.unbind(1), alpha.unbind(1), beta.unbind(1), strict=True):
            z, ld = radial(z, z0, a, b)
            log_det.append(ld)
        return z, torch.stack(log_det).sum(0)

    def steps(self, z: Tensor, r: int = 0) -> list[Tensor]:
        """Flow r's z_0, z_1, …, z_K for z_0 = z (N, D), layer by layer through ``radial``."""
        alpha, beta = radial_alpha_beta(self.alpha_raw[r], self.beta_raw[r])
        zs = [z]
        for k in range(self.z0.shape[1]):
            zs.append(radial(zs[-1], self.z0[r, k], alpha[k], beta[k])[0])
        return zs

    def inverse(self, y: Tensor, r: int = 0) -> tuple[Tensor, Tensor]:
        """Flow r's z0 with forward(z0) = y (N, D), and Σ_k ln|det J_k| along the way."""
        alpha, beta = radial_alpha_beta(self.alpha_raw[r], self.beta_raw[r])
        z0, log_det = self.z0[r], []
        for k in reversed(range(z0.shape[0])):
            y = radial_inverse(y, z0[k], alpha[k], beta[k])
            log_det.append(radial(y, z0[k], alpha[k], beta[k])[1])
        return y, torch.stack(log_det).sum(0)


class Flow(nn.Module):
    """q_K: a diagonal-Gaussian base pushed through K planar or radial layers.

    With ``restarts`` = R > 1 it holds R independent flows whose parameters carry a leading
    dimension R, so that they are fitted as one batched computation (``rsample_all``); ``select``
    takes one of them out as a single flow. The single-flow methods (``rsample``, ``sample``,
    ``log_prob``) need R = 1.
    """

    def __init__(
        self,
        dim: int,
        K: int,
        kind: str = "planar",
        init_scale: float = 1.0,
        base_scale: float = 1.0,
        restarts: int = 1,
    ) -> None:
        super().__init__()
        if kind not in FLOW_TYPES:
            raise ValueError(f"unknown flow type {kind!r}; choose one of {', '.join(FLOW_TYPES)}")
        self.dim, self.K, self.kind, self.restarts = dim, K, kind, restarts
        self.base = DiagonalGaussian(dim, base_scale, restarts)
        self.layers = (PlanarFlow if kind == "planar" else RadialFlow)(dim, K, init_scale, restarts)

    def rsample_all(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """n samples of each of the R flows, (R, n, D), and their ln q (R, n), differentiable."""
        z0, log_q0 = self.base.rsample(n, generator)
        z, log_det = self.layers(z0)
        return z, log_q0 - log_det

    def rsample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples z_K ~ q_K (n, D) with ln q_K(z_K) = ln q0(z0) − Σ ln|det J_k| (n,)."""
        self._single()
        z, log_q = self.rsample_all(n, generator)
        return z[0], log_q[0]

    @torch.no_grad()
    def log_prob(self, y: Tensor, chunk: int = 65536) -> Tensor:
        """ln q_K(y), exact at any point: invert the layers to z0, then
        ln q_K(y) = ln q0(z0) − Σ_k ln|det J_k(z_{k−1})|. Compute in float64 for 1e-6 accuracy."""
        self._single()
        parts = []
        for i in range(0, len(y), chunk):
            z0, log_det = self.layers.inverse(y[i : i + chunk])
            parts.append(self.base.log_prob(z0.unsqueeze(0))[0] - log_det)
        return torch.cat(parts) if parts else y.new_zeros(0)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, chunk: int = 65536
    ) -> Tensor:
        """n samples of q_K, without gradients, drawn in chunks to bound memory."""
        parts = [self.rsample(min(chunk, n - i), generator)[0] for i in range(0, n, chunk)]
        return torch.cat(parts) if parts else self.base.loc.new_zeros(0, self.dim)

    @torch.no_grad()
    def trajectory(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """n draws followed through the flow: [z_0, z_1, …, z_K], each (n, D), and each draw's
        distance from the base mean in base standard deviations, ‖(z_0 − μ)/σ‖ (n,)."""
        self._single()
        z0, _ = self.base.rsample(n, generator)
        radius = ((z0[0] - self.base.loc[0]) / self.base.log_scale[0].exp()).norm(dim=-1)
        return self.layers.steps(z0[0]), radius

    def select(self, r: int) -> Flow:
        """Restart r as a single flow (a copy)."""
        flow = Flow(self.dim, self.K, self.kind, restarts=1).to(self.base.loc)
        flow.load_state_dict(
            {k: v[r : r + 1].detach().clone() for k, v in self.state_dict().items()}
        )
        return flow

    def _single(self) -> None:
        if self.restarts != 1:
            raise ValueError(f"this Flow holds {self.restarts} restarts: select(r) one first")
