"""The trust report of a conditional fit, per condition: at each c of a grid, q(·|c) and p(·|c)
are an ordinary flow and energy (``ConditionalFlow.at``, ``ConditionalEnergy.at``), so the
numbers are those of an unconditional fit's report: the ELBO, importance-sampling ln Z, ESS and
Pareto k̂ from q's draws, and in 1-D and 2-D ln Z by quadrature and so KL(q‖p) = ln Z − ELBO,
KL(p‖q) and the total variation. ``summarise`` gives the mean and the worst over the grid.

Each condition gets the single fit's verdict (``nfcli.diagnostics.verdict`` on its numbers), and
the fit the worst of them, naming the condition (``conditional_verdict``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

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
    verdict,
)
from nfcli.report import Quadrature, TrustReport

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
    # the single fit's verdict on these numbers, and why (None in reports before issue 28)
    verdict: str | None = None
    verdict_reasons: list[str] = field(default_factory=list)

    def judge(self) -> None:
        """Set ``verdict`` and its reasons by the rules of a single fit's report."""
        quad = Quadrature(self.log_z_quadrature, self.kl_qp) if self.kl_qp is not None else None
        r = TrustReport(
            elbo=self.elbo,
            log_z_is=self.log_z_is,
            ess_fraction=self.ess_fraction,
            khat=self.khat,
            khat_verdict=self.khat_verdict,
            quadrature=quad,
        )
        self.verdict, self.verdict_reasons = verdict(r)


LEVELS = ("good", "usable", "do not trust")


def conditional_verdict(
    points: list[ConditionPoint], names: list[str], stopped: str | None, warnings: list[str]
) -> tuple[str, list[str]]:
    """A conditional fit's verdict: the worst of its conditions' (each ``ConditionPoint.judge``),
    its reason naming that condition and how many share the verdict; an interrupted fit is at
    best usable, one stopped for a non-finite loss is do not trust; warnings make it usable."""
    for p in points:
        if p.verdict is None:
            p.judge()
    worst = max(points, key=lambda p: (LEVELS.index(p.verdict), p.khat))
    level, reasons = LEVELS.index(worst.verdict), []
    if level > 0:
        at = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, worst.c, strict=True))
        same = sum(p.verdict == worst.verdict for p in points)
        reasons.append(
            f"{worst.verdict} at {same} of the {len(points)} conditions; the worst, at {at}: "
            + " ".join(worst.verdict_reasons)
        )
    for w in warnings:
        level = max(level, 1)
        reasons.append(w)
    if stopped == "interrupted":
        level = max(level, 1)
        reasons.append("the fit was interrupted; nfcli fit --resume model.pt finishes it.")
    elif stopped is not None:
        level = 2
        reasons.append(f"the fit stopped early ({stopped}).")
    if not reasons:
        reasons.append(f"good at every one of the {len(points)} conditions.")
    return LEVELS[level], reasons


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
        point.judge()
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
