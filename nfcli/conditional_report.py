"""The trust report of a conditional fit, per condition: at each c of a grid, q(·|c) and p(·|c)
are an ordinary flow and energy (``ConditionalFlow.at``, ``ConditionalEnergy.at``), so the
numbers are those of an unconditional fit's report: the ELBO, importance-sampling ln Z, ESS and
Pareto k̂ from q's draws, and in 1-D and 2-D ln Z by quadrature and so KL(q‖p) = ln Z − ELBO,
KL(p‖q) and the total variation. ``summarise`` gives the mean and the worst over the grid.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcli.conditional import ConditionalFlow
from nfcli.conditions import ConditionalEnergy
from nfcli.diagnostics import (
    choose_window,
    compare_on_grid,
    draw_weighted,
    importance_from_log_weights,
    khat_verdict,
)

N_DRAWS = 20_000  # draws of q(·|c) per condition


@dataclass
class ConditionPoint:
    """The diagnostics of q(·|c) at one condition c (the quadrature ones None where D > 2)."""

    c: list[float]
    elbo: float
    log_z_is: float
    ess_fraction: float
    khat: float
    khat_verdict: str
    log_z_quadrature: float | None = None
    kl_qp: float | None = None
    kl_pq: float | None = None
    tv: float | None = None


@dataclass
class ConditionalSummary:
    """Over a grid of conditions: the mean and the worst KL(q‖p) (D ≤ 2) and k̂, and where."""

    points: int
    mean_kl_qp: float | None
    worst_kl_qp: float | None
    worst_kl_at: list[float] | None
    worst_khat: float
    worst_khat_at: list[float]


@torch.no_grad()
def evaluate_at(
    flow: ConditionalFlow,
    energy: ConditionalEnergy,
    conditions: Tensor,
    n: int = N_DRAWS,
    seed: int = 0,
) -> list[ConditionPoint]:
    """The diagnostics at each row of ``conditions`` (M, C), from n fresh draws of q(·|c)."""
    points = []
    for i, c in enumerate(conditions):
        q, p = flow.at(c), energy.at(c)
        g = torch.Generator().manual_seed(seed + i)
        z, log_w = draw_weighted(q, p, n, g)
        imp = importance_from_log_weights(log_w)
        point = ConditionPoint(
            c.tolist(), imp.elbo, imp.log_z, imp.ess_fraction, imp.khat, khat_verdict(imp.khat)
        )
        if energy.dim <= 2:
            grid = choose_window(z, p)
            if math.isfinite(grid.log_z):
                point.log_z_quadrature = grid.log_z
                point.kl_qp = grid.log_z - imp.elbo
                point.kl_pq, point.tv = compare_on_grid(q, p, grid.window, grid.log_z)
        points.append(point)
    return points


def summarise(points: list[ConditionPoint]) -> ConditionalSummary:
    """The mean and worst KL(q‖p) over the points that have it, and the worst k̂."""
    kls = [(p.kl_qp, p.c) for p in points if p.kl_qp is not None]
    worst_k = max(points, key=lambda p: p.khat if math.isfinite(p.khat) else math.inf)
    if kls:
        worst = max(kls, key=lambda x: x[0])
        return ConditionalSummary(
            len(points),
            statistics.fmean(k for k, _ in kls),
            worst[0],
            worst[1],
            worst_k.khat,
            worst_k.c,
        )
    return ConditionalSummary(len(points), None, None, None, worst_k.khat, worst_k.c)
