"""Monotonic rational-quadratic spline (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural
Spline Flows", arXiv 1906.04032, section 3.1 and appendix A), with linear (identity) tails.

One pure, elementwise, invertible map of the real line with its log-derivative; a coupling or
autoregressive transform supplies the per-element parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import softmax, softplus


def _knots(raw: Tensor, bound: float, min_size: float) -> tuple[Tensor, Tensor]:
    """Knot positions and bin sizes on [-bound, bound] from unnormalised bin sizes raw (..., B).

    Sizes u = min_size + (1 − min_size·B)·softmax(raw) sum to 1; the knots are
    −bound + 2·bound·cumsum(u) with the first and last set to exactly ∓bound (so x = ±bound is a
    knot without rounding), and the bin sizes are their differences.
    Returns knots (..., B + 1) and sizes (..., B).
    """
    num_bins = raw.shape[-1]
    u = min_size + (1.0 - min_size * num_bins) * softmax(raw, dim=-1)
    inner = 2.0 * bound * torch.cumsum(u[..., :-1], dim=-1) - bound
    edge = raw.new_full((*raw.shape[:-1], 1), bound)
    knots = torch.cat([-edge, inner, edge], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def rational_quadratic_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float = 5.0,
    inverse: bool = False,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline on [−bound, bound], identity outside.

    Parameters (raw, unconstrained; B bins):
      widths, heights: (..., B). Bin widths w_k = 2·bound·(min_width + (1 − min_width·B)·
        softmax(widths)_k), likewise heights h_k with min_height; knots x_0 = −bound < x_1 < … <
        x_B = bound and y_0 = −bound < … < y_B = bound are their cumulative sums.
      derivatives: (..., B − 1), the interior knot derivatives d_k = min_derivative +
        softplus(derivatives_{k−1}), k = 1 … B − 1; the boundary derivatives d_0 = d_B = 1, so
        the spline joins the identity tails with a continuous first derivative.
    The parameters' leading dims broadcast with x's (x (R, N, d) with parameters (R, N, d, B)).

    In bin k (x_k ≤ x ≤ x_{k+1}, the right edge x = bound in the last bin), with
    ξ = (x − x_k)/w_k ∈ [0, 1], s_k = h_k/w_k:

        y = y_k + h_k·[s_k·ξ² + d_k·ξ(1 − ξ)] / [s_k + (d_{k+1} + d_k − 2·s_k)·ξ(1 − ξ)],

        dy/dx = s_k²·[d_{k+1}·ξ² + 2·s_k·ξ(1 − ξ) + d_k·(1 − ξ)²]
                / [s_k + (d_{k+1} + d_k − 2·s_k)·ξ(1 − ξ)]²  > 0.

    Outside [−bound, bound], y = x and ln dy/dx = 0.
    The inverse solves a·ξ² + b·ξ + c = 0 in the bin k with y_k ≤ y ≤ y_{k+1}, where
    a = h_k·(s_k − d_k) + (y − y_k)·(d_{k+1} + d_k − 2·s_k),
    b = h_k·d_k − (y − y_k)·(d_{k+1} + d_k − 2·s_k), c = −s_k·(y − y_k),
    by the cancellation-free root ξ = 2c / (−b − √(b² − 4ac)) (appendix A), clamped to [0, 1]
    against rounding where the spline is nearly flat, then x = x_k + ξ·w_k.

    Args:
      x: (...) input points (y when inverse=True).
      bound: the half-width of the spline's domain and range.
      inverse: False: return (y, ln dy/dx). True: x is read as y, and the function returns
        (f⁻¹(y), ln dx/dy), i.e. minus the forward log-derivative at the solution.
      min_width, min_height, min_derivative: lower bounds as above (min_width·B and min_height·B
        must be < 1).
    Returns (out, log_det), both of the broadcast shape of x and the parameters' leading dims
    (x's shape when the parameters' leading dims broadcast to it), elementwise.
    """
    num_bins = widths.shape[-1]
    if heights.shape[-1] != num_bins or derivatives.shape[-1] != num_bins - 1:
        raise ValueError(
            f"expected widths, heights (..., B) and derivatives (..., B - 1); got "
            f"{tuple(widths.shape)}, {tuple(heights.shape)}, {tuple(derivatives.shape)}"
        )
    if min_width * num_bins >= 1.0 or min_height * num_bins >= 1.0:
        raise ValueError(f"min_width and min_height must be < 1/B = 1/{num_bins}")
    shape = torch.broadcast_shapes(
        x.shape, widths.shape[:-1], heights.shape[:-1], derivatives.shape[:-1]
    )

    xk, wk = _knots(widths, bound, min_width)
    yk, hk = _knots(heights, bound, min_height)
    ones = derivatives.new_ones((*derivatives.shape[:-1], 1))
    dk = torch.cat([ones, min_derivative + softplus(derivatives), ones], dim=-1)
    xk, yk = xk.expand(*shape, num_bins + 1), yk.expand(*shape, num_bins + 1)
    wk, hk = wk.expand(*shape, num_bins), hk.expand(*shape, num_bins)
    dk = dk.expand(*shape, num_bins + 1)

    # The spline is evaluated everywhere on the input clamped to [-bound, bound], so that every
    # value (and gradient) is finite, and the identity is selected outside.
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound).expand(shape)
    # Bin index = number of interior knots ≤ xc, in 0 … B − 1: x = bound falls in the last bin.
    knots = yk if inverse else xk
    k = (xc.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, k).squeeze(-1)

    x0, y0, w, h = pick(xk), pick(yk), pick(wk), pick(hk)
    d0, d1 = pick(dk[..., :-1]), pick(dk[..., 1:])
    s = h / w
    curv = d0 + d1 - 2.0 * s

    if inverse:
        dy = xc - y0
        a = h * (s - d0) + dy * curv
        b = h * d0 - dy * curv
        c = -s * dy
        disc = (b * b - 4.0 * a * c).clamp_min(0.0)
        xi = 2.0 * c / (-b - torch.sqrt(disc))
        # Where the spline is nearly flat (dx/dy ~ 1e7) the root is ill-conditioned, and rounding
        # can put it well outside the bin, where the log-derivative below is the log of a negative
        # number. Its value is clamped to the bin; its gradient stays the root's (a plain clamp
        # would zero it for the roots that rounding puts a hair past a knot).
        xi = xi + (xi.clamp(0.0, 1.0) - xi).detach()
        out = x0 + xi * w
    else:
        xi = (xc - x0) / w

    t = xi * (1.0 - xi)
    denom = s + curv * t
    log_deriv = (
        2.0 * torch.log(s)
        + torch.log(d1 * xi * xi + 2.0 * s * t + d0 * (1.0 - xi) ** 2)
        - 2.0 * torch.log(denom)
    )
    if inverse:
        log_det = -log_deriv
    else:
        out = y0 + h * (s * xi * xi + d0 * t) / denom
        log_det = log_deriv

    return torch.where(inside, out, x), torch.where(inside, log_det, torch.zeros_like(log_det))
