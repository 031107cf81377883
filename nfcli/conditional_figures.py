"""The figures of a conditional fit at given conditions (``nfcli plot MODEL --at ...``).

conditional.png: at each condition c of the grid, the target p(·|c) and the fitted q(·|c) side by
side: in 2-D one row per c, the two density images on one colour scale (0 to the row's larger
maximum); in 1-D one panel per c with both curves. p(·|c) = exp(−U(z; c) − ln Z(c)), ln Z(c) by
quadrature (``nfcli.diagnostics.choose_window``) on a window that holds q's draws and p's mass;
q(·|c) is exact (``ConditionalFlow.at(c)``).

Above 2-D there is no quadrature: one row per c, one panel per variable (the first
MARGINALS_SHOWN), q's marginal as a histogram of its draws and p's as the same draws weighted by
their Pareto-smoothed importance weights p/q (the estimate the trust report's k̂ qualifies; it
only sees where q goes), k̂ in the row's title.

kl.png (one condition, D ≤ 2): KL(q‖p) and KL(p‖q) against the condition, from
``nfcli.conditional_report.evaluate_at``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor

from nfcli.checkpoint import ConditionalCheckpoint
from nfcli.conditional_report import ConditionPoint
from nfcli.conditions import Condition, ConditionalEnergy
from nfcli.diagnostics import Window, choose_window, log_prob, psis
from nfcli.figures import GRID, FigureOptions, range_1d, window_2d
from nfcli.plots import (
    _image,
    density_grid,
    fit_title,
    normalised_curve,
    save_figure,
)

N_DRAWS = 5_000  # draws of q(·|c) that place the window
PANELS_PER_ROW_1D = 4
MARGINALS_SHOWN = 4  # variables drawn per condition above 2-D
MARGINAL_DRAWS, MARGINAL_BINS = 20_000, 50


def at_label(conditions: Sequence[Condition], c: Sequence[float]) -> str:
    """'theta = 0.7' (several: 'a = 0, b = 2')."""
    return ", ".join(f"{cond.name} = {v:.4g}" for cond, v in zip(conditions, c, strict=True))


def _panel_2d(flow_q, energy_p, window: Window | None, seed: int) -> tuple[Window, Tensor, Tensor]:
    """The window (``nfcli.figures.window_2d`` unless given), and q's and p's densities
    (normalised) on it, as (GRID, GRID) images."""
    with torch.no_grad():
        samples = flow_q.sample(N_DRAWS, torch.Generator().manual_seed(seed)).double()
    drawn, log_z = window_2d(samples, energy_p, None)
    window = window or drawn
    q = density_grid(flow_q.log_prob, window, GRID, torch.float64)
    finite = log_z is not None and math.isfinite(log_z)
    p = density_grid(
        lambda x: -energy_p(x) - (log_z if finite else 0.0), window, GRID, torch.float64
    )
    if not finite:  # no quadrature: normalise on the drawn window itself
        (x0, x1), (y0, y1) = window
        p = p / (p.sum() * (x1 - x0) * (y1 - y0) / GRID**2).clamp_min(1e-300)
    return window, q, p


def _curves_1d(flow_q, energy_p, window: Window | None, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """xs and q's and p's densities on them (p normalised by quadrature or on xs)."""
    with torch.no_grad():
        samples = flow_q.sample(N_DRAWS, torch.Generator().manual_seed(seed)).double()
    grid = choose_window(samples, energy_p)
    finite = math.isfinite(grid.log_z)
    if window is not None:
        lo, hi = window[0]
    else:
        lo, hi = range_1d(samples)
        if finite:
            lo, hi = min(lo, grid.window[0][0]), max(hi, grid.window[0][1])
    xs = torch.linspace(lo, hi, 1000, dtype=torch.float64)
    q = log_prob(flow_q, xs[:, None]).exp()
    with torch.no_grad():
        neg_u = -energy_p(xs[:, None])
    return xs, q, normalised_curve(neg_u, xs, grid.log_z if finite else None)


def conditional_density_figure(
    ckpt: ConditionalCheckpoint,
    energy: ConditionalEnergy,
    grid: Tensor,
    window: Window | None = None,
    points: Sequence[ConditionPoint] | None = None,
) -> Figure:
    """Target | q at each row of ``grid`` (M, C): see the module's docstring. ``points``: the
    diagnostics at the same conditions, for KL(q‖p) in each panel's title."""
    flow, names, conds = ckpt.flow, ckpt.names, ckpt.conditions
    title = f"{ckpt.report.target}: {ckpt.config.flow} flow, K = {ckpt.config.K}, conditional"
    M = len(grid)
    kls = [p.kl_qp for p in points] if points is not None else [None] * M

    def label(i: int) -> str:
        kl = kls[i]
        return at_label(conds, grid[i].tolist()) + (
            f"   KL(q‖p) = {kl:.4f}" if kl is not None else ""
        )

    if flow.dim == 2:
        fig, axes = plt.subplots(
            M, 2, figsize=(8.4, 3.4 * M + 0.6), squeeze=False, layout="constrained"
        )
        for i, c in enumerate(grid):
            q_flow = flow.at(c.float()).double()
            win, q, p = _panel_2d(q_flow, energy.at(c), window, ckpt.config.seed + i)
            vmax = max(float(q.max()), float(p.max())) or 1.0
            for ax, (what, img) in zip(axes[i], (("target p", p), ("fitted q", q)), strict=True):
                im = _image(ax, img, win, 0.0, vmax, "viridis")
                ax.set_title(f"{what}: {label(i)}", fontsize=9)
                ax.set_xlabel(names[0])
                ax.set_ylabel(names[1])
            fig.colorbar(im, ax=list(axes[i]), shrink=0.85)
    elif flow.dim == 1:
        cols = min(M, PANELS_PER_ROW_1D)
        rows = math.ceil(M / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.6), squeeze=False, layout="constrained"
        )
        for i, c in enumerate(grid):
            ax = axes[i // cols][i % cols]
            q_flow = flow.at(c.float()).double()
            xs, q, p = _curves_1d(q_flow, energy.at(c), window, ckpt.config.seed + i)
            ax.plot(xs.numpy(), p.numpy(), color="k", ls="--", label="target p")
            ax.plot(xs.numpy(), q.numpy(), color="C0", label="fitted q")
            ax.set_title(label(i), fontsize=9)
            ax.set_xlabel(names[0])
            if i == 0:
                ax.legend(fontsize=8)
        for j in range(M, rows * cols):
            axes[j // cols][j % cols].axis("off")
    else:
        shown = min(flow.dim, MARGINALS_SHOWN)
        fig, axes = plt.subplots(
            M, shown, figsize=(3.2 * shown, 2.6 * M + 0.6), squeeze=False, layout="constrained"
        )
        for i, c in enumerate(grid):
            q_flow = flow.at(c.float()).double()
            z, w, khat = _reweighted(q_flow, energy.at(c), ckpt.config.seed + i)
            for j in range(shown):
                ax = axes[i][j]
                x = z[:, j].numpy()
                edges = torch.linspace(
                    float(z[:, j].min()), float(z[:, j].max()), MARGINAL_BINS + 1
                )
                ax.hist(x, bins=edges.numpy(), density=True, color="C0", alpha=0.45, label="q")
                if w is not None:
                    ax.hist(
                        x,
                        bins=edges.numpy(),
                        weights=w.numpy(),
                        density=True,
                        histtype="step",
                        color="k",
                        lw=1.2,
                        label="p (q's draws reweighted)",
                    )
                ax.set_xlabel(names[j])
                ax.set_yticks([])
                if j == 0:
                    k = f"k̂ = {khat:.2f}" if khat is not None else "p/q not finite"
                    ax.set_title(f"{label(i)}   ({k})", fontsize=9, loc="left")
                if i == 0 and j == shown - 1:
                    ax.legend(fontsize=7)
    fit_title(fig, title, fontsize="large")
    return fig


def _reweighted(flow_q, energy_p, seed: int) -> tuple[Tensor, Tensor | None, float | None]:
    """MARGINAL_DRAWS draws of q (N, D), their Pareto-smoothed weights p/q (None where U or ln q
    is not finite at some draw) and k̂."""
    with torch.no_grad():
        z, log_q = flow_q.rsample(MARGINAL_DRAWS, torch.Generator().manual_seed(seed))
        log_w = (-energy_p(z) - log_q).double()
    if not bool(log_w.isfinite().all()):
        return z.double(), None, None
    smoothed, khat = psis(log_w)
    return z.double(), torch.exp(smoothed - smoothed.max()), float(khat)


def kl_figure(points: Sequence[ConditionPoint], condition: Condition, title: str) -> Figure:
    """KL(q‖p) and KL(p‖q) (nats) against one condition, at the points that have them."""
    have = [p for p in points if p.kl_qp is not None]
    xs = [p.c[0] for p in have]
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    ax.plot(xs, [p.kl_qp for p in have], "o-", color="C0", label="KL(q‖p)")
    ax.plot(xs, [p.kl_pq for p in have], "s--", color="C1", label="KL(p‖q)")
    ax.set_xlabel(condition.name)
    ax.set_ylabel("nats")
    ax.set_xlim(condition.lo, condition.hi)
    ax.set_ylim(bottom=0)
    ax.legend()
    fit_title(fig, title, fontsize="large")
    return fig


def write_conditional_figures(
    ckpt: ConditionalCheckpoint,
    energy: ConditionalEnergy,
    grid: Tensor,
    out: Path,
    options: FigureOptions | None = None,
    points: Sequence[ConditionPoint] | None = None,
) -> list[Path]:
    """conditional.png, and kl.png when there is one condition, D ≤ 2 and ``points`` (the
    diagnostics at ``grid``); returns the paths."""
    opts = options or FigureOptions()
    fig = conditional_density_figure(ckpt, energy, grid, opts.window, points)
    paths = [save_figure(fig, out / f"conditional.{opts.format}", opts.dpi)]
    if points is not None and len(ckpt.conditions) == 1 and ckpt.flow.dim <= 2 and len(grid) > 1:
        title = f"{ckpt.report.target}: KL per condition"
        fig = kl_figure(points, ckpt.conditions[0], title)
        paths.append(save_figure(fig, out / f"kl.{opts.format}", opts.dpi))
    return paths
