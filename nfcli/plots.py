"""Figures, drawn headless (Agg) and written atomically.

Each figure has a builder that returns a matplotlib Figure (tests count its panels) and is written
by ``save_figure`` in the format its file name ends with (png, pdf or svg):

* ``density_2d_figure``: target p | fitted q (exact) | q − p on one colour scale;
* ``density_1d_figure``: target and fitted densities as curves, with a histogram of samples;
* ``layers_figure``: the samples after layers 0, 1, …, K, coloured by where they started;
* ``loss_figure``: the β = 1 loss (−ELBO) per step, the annealed loss, β, and −ln Z as its floor;
* ``pairs_figure``: a corner plot of 1-D and 2-D marginals (D > 2);
* ``compare_figure``: the paper's Figure 3 layout: per target, the target, the fitted density per
  flow type and K, and the bound against K.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor

from nfcli.diagnostics import Grid, Window, grid_points
from nfcli.io import atomic_write
from nfcli.train import beta_schedule

FORMATS = ("png", "pdf", "svg")
DPI = 120


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` atomically in the format named by the file's suffix, then close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return Path(path)


# --- windows -------------------------------------------------------------------------------------


def sample_window(samples: Tensor, pad: float = 0.2) -> Window:
    """The first two columns' 0.1%–99.9% extent, padded by ``pad`` of the larger span each side."""
    s = samples.detach().cpu().double()[:, :2]
    lo, hi = torch.quantile(s, 0.001, dim=0), torch.quantile(s, 0.999, dim=0)
    margin = float((hi - lo).max().clamp_min(1e-3)) * pad
    return (
        (lo[0].item() - margin, hi[0].item() + margin),
        (lo[1].item() - margin, hi[1].item() + margin),
    )


def mass_window(grid: Grid, mass: float = 1e-3, pad: float = 0.1) -> Window:
    """Where the target's mass is on a quadrature grid: each marginal's ``mass``–(1 − ``mass``)
    quantiles, padded by ``pad`` of the larger span on each side."""
    p = grid.log_p.exp()
    bounds = []
    for marginal, (a, b) in ((p.sum(0), grid.window[0]), (p.sum(1), grid.window[1])):
        cdf = torch.cumsum(marginal, 0) / marginal.sum()
        n = len(cdf)
        i0 = int(torch.searchsorted(cdf, torch.tensor(mass, dtype=cdf.dtype)))
        i1 = int(torch.searchsorted(cdf, torch.tensor(1 - mass, dtype=cdf.dtype)))
        bounds.append((a + (b - a) * i0 / n, a + (b - a) * min(i1 + 1, n) / n))
    margin = pad * max(hi - lo for lo, hi in bounds)
    return tuple((lo - margin, hi + margin) for lo, hi in bounds)  # type: ignore[return-value]


def union(a: Window, b: Window) -> Window:
    return (
        (min(a[0][0], b[0][0]), max(a[0][1], b[0][1])),
        (min(a[1][0], b[1][0]), max(a[1][1], b[1][1])),
    )


# --- density -------------------------------------------------------------------------------------


def density_grid(
    fn: Callable[[Tensor], Tensor],
    window: Window,
    n: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> Tensor:
    """exp(fn) on the n×n cell midpoints of ``window`` (evaluated in ``dtype`` on ``device``) as
    an (n, n) CPU image (rows are y), float64; NaN counts as zero density."""
    with torch.no_grad():
        values = fn(grid_points(window, n).to(device=device, dtype=dtype)).double().cpu()
    return torch.nan_to_num(values, nan=-math.inf).exp().reshape(n, n)


def _image(ax: plt.Axes, img: Tensor, window: Window, vmin: float, vmax: float, cmap: str):
    (x0, x1), (y0, y1) = window
    return ax.imshow(
        img.numpy(),
        origin="lower",
        extent=(x0, x1, y0, y1),
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        interpolation="nearest",
        aspect="auto" if not 0.5 < (y1 - y0) / (x1 - x0) < 2 else "equal",
    )


def density_2d_figure(
    window: Window,
    q: Tensor,
    p: Tensor | None,
    names: Sequence[str],
    title: str,
    kl: float | None = None,
) -> Figure:
    """Target p | fitted q | q − p: (n, n) density images on ``window``, p and q on one colour
    scale and the difference on its symmetric version. Without p, q alone."""
    panels = [("fitted q (exact density)", q)]
    if p is not None:
        panels = [("target p", p), *panels]
    vmax = max(float(img.max()) for _, img in panels) or 1.0
    shown = [(label, img, "viridis", 0.0) for label, img in panels]
    if p is not None:
        shown.append(("difference q − p", q - p, "RdBu_r", -vmax))
    (x0, x1), (y0, y1) = window
    height = min(6.0, max(2.5, 4.0 * (y1 - y0) / (x1 - x0)))
    fig, axes = plt.subplots(
        1,
        len(shown),
        figsize=(4.2 * len(shown) + 1.0, height + 0.7),
        squeeze=False,
        layout="constrained",
    )
    for ax, (label, img, cmap, vmin) in zip(axes[0], shown, strict=True):
        im = _image(ax, img, window, vmin, vmax, cmap)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(title if kl is None else f"{title}   KL(q‖p) = {kl:.4f} nats")
    return fig


def density_1d_figure(
    xs: Tensor,
    q: Tensor,
    p: Tensor | None,
    samples: Tensor,
    name: str,
    title: str,
) -> Figure:
    """The fitted density q (exact) and the target p as curves over ``xs``, with a histogram of
    samples of q."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.hist(
        samples.detach().cpu().double().reshape(-1).numpy(),
        bins=150,
        range=(xs[0].item(), xs[-1].item()),
        density=True,
        alpha=0.3,
        label="samples of q",
    )
    ax.plot(xs.numpy(), q.numpy(), label="fitted q (exact)", color="C0")
    if p is not None:
        ax.plot(xs.numpy(), p.numpy(), label="target p", color="k", ls="--")
    ax.set_xlim(xs[0].item(), xs[-1].item())
    ax.set_xlabel(name)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return fig


def normalised_curve(neg_u: Tensor, xs: Tensor, log_z: float | None) -> Tensor:
    """exp(−U − ln Z) on ``xs``; without ln Z, normalised by the trapezoid rule over ``xs``."""
    neg_u = torch.nan_to_num(neg_u.double(), nan=-math.inf)
    if log_z is None:
        log_z = torch.logsumexp(neg_u, 0).item() + math.log((xs[1] - xs[0]).item())
    return (neg_u - log_z).exp()


# --- layers --------------------------------------------------------------------------------------


def default_layers(K: int, most: int = 36) -> list[int]:
    """Every layer 0…K when that is at most ``most`` panels, else ``most`` evenly spaced ones."""
    if most >= K + 1:
        return list(range(K + 1))
    return sorted({round(i * K / (most - 1)) for i in range(most)})


def layers_figure(
    zs: Sequence[Tensor],
    radius: Tensor,
    layers: Sequence[int],
    names: Sequence[str],
    title: str,
    window: Window | None = None,
    columns: tuple[int, int] = (0, 1),
) -> Figure:
    """One panel per requested layer k: the draws z_k, coloured by their start's distance from the
    base mean. In 1-D each panel plots z_k against z_0 (the map so far); above 2-D, the two
    ``columns`` are shown. All panels share one window (the draws' extent over the shown layers)."""
    dim = zs[0].shape[1]
    pts = [(z[:, columns[0]], z[:, columns[1]]) if dim > 1 else (z[:, 0], zs[0][:, 0]) for z in zs]
    if window is None:
        xs = torch.cat([pts[k][0] for k in layers]).double()
        ys = torch.cat([pts[k][1] for k in layers]).double()
        window = sample_window(torch.stack([xs, ys], 1), pad=0.05)
    n = len(layers)
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.1 * cols + 1.2, 2.1 * rows + 0.7),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    lo, hi = torch.quantile(radius.double(), torch.tensor([0.01, 0.99], dtype=torch.float64))
    scatter = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        k = layers[i]
        x, y = pts[k]
        scatter = ax.scatter(
            x.numpy(),
            y.numpy(),
            c=radius.numpy(),
            s=1.5,
            cmap="viridis",
            vmin=float(lo),
            vmax=float(hi),
            linewidths=0,
            rasterized=True,
        )
        ax.set_title("base z₀" if k == 0 else f"after layer {k}", fontsize=9)
        ax.set_xlim(*window[0])
        ax.set_ylim(*window[1])
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(names[columns[0]] if dim > 1 else names[0], fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(names[columns[1]] if dim > 1 else f"{names[0]} at z₀", fontsize=8)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, shrink=0.6, label="start: ‖(z₀ − μ)/σ‖")
    shown = f" ({names[columns[0]]}, {names[columns[1]]} of D = {dim})" if dim > 2 else ""
    fig.suptitle(f"{title}: samples after each layer{shown}")
    return fig


# --- loss ----------------------------------------------------------------------------------------


def loss_figure(
    loss: Tensor,
    loss_beta1: Tensor,
    anneal: int,
    log_z: float | None,
    title: str,
) -> Figure:
    """F_β and the negative ELBO F(β=1) per step (smoothed); −ln Z is the floor F approaches."""
    n = len(loss)
    steps = torch.arange(1, n + 1)
    w = max(1, n // 200)

    def smooth(x: Tensor) -> Tensor:
        x = torch.where(torch.isfinite(x), x, torch.nan).double()
        kernel = torch.ones(1, 1, w, dtype=torch.float64) / w
        return torch.nn.functional.conv1d(x[None, None], kernel)[0, 0]

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.plot(steps[w - 1 :], smooth(loss_beta1).numpy(), label="−ELBO = F(β = 1)", lw=1.2)
    ax.plot(steps[w - 1 :], smooth(loss).numpy(), label="annealed objective F_β", lw=1, alpha=0.7)
    if log_z is not None:
        ax.axhline(-log_z, color="k", ls="--", lw=1, label=f"−ln Z = {-log_z:.4f} (the floor)")
    finite = loss_beta1[torch.isfinite(loss_beta1)]
    if len(finite):
        lo = float(finite.min()) if log_z is None else min(-log_z, float(finite.min()))
        hi = float(torch.quantile(finite.double(), 0.9))
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    if anneal:
        ax2 = ax.twinx()
        ax2.plot(steps.numpy(), beta_schedule(steps - 1, anneal).numpy(), color="gray", lw=0.8)
        ax2.set_ylabel("β", color="gray")
        ax2.set_ylim(0, 1.05)
    ax.legend(loc="center right", framealpha=0.9).set_zorder(10)
    return fig


# --- pairs ---------------------------------------------------------------------------------------


def pairs_figure(
    samples: Tensor,
    names: Sequence[str],
    columns: Sequence[int],
    title: str,
    weights: Tensor | None = None,
    bins: int = 60,
) -> Figure:
    """A corner plot of q's samples over ``columns``: 1-D histograms on the diagonal, 2-D
    histograms below it. With ``weights`` (importance weights p/q of the same samples), the
    diagonal also draws p's marginals estimated by reweighting."""
    s = samples.detach().cpu().double()[:, list(columns)]
    d = s.shape[1]
    lo, hi = torch.quantile(s, 0.005, dim=0), torch.quantile(s, 0.995, dim=0)
    pad = 0.05 * (hi - lo).clamp_min(1e-6)
    ranges = [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad, strict=True)]
    size = max(1.6, min(2.4, 12.0 / d))
    fig, axes = plt.subplots(
        d, d, figsize=(size * d + 0.6, size * d + 0.6), squeeze=False, layout="constrained"
    )
    w = None if weights is None else (weights / weights.sum()).double().numpy()
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(
                    s[:, i].numpy(),
                    bins=bins,
                    range=ranges[i],
                    density=True,
                    color="C0",
                    alpha=0.45,
                    label="q",
                )
                if w is not None:
                    ax.hist(
                        s[:, i].numpy(),
                        bins=bins,
                        range=ranges[i],
                        weights=w,
                        density=True,
                        histtype="step",
                        color="k",
                        lw=1,
                        label="p (q reweighted)",
                    )
                ax.set_yticks([])
                ax.set_xlim(*ranges[i])
            else:
                ax.hist2d(
                    s[:, j].numpy(),
                    s[:, i].numpy(),
                    bins=bins,
                    range=[ranges[j], ranges[i]],
                    cmap="Blues",
                    rasterized=True,
                )
                ax.set_xlim(*ranges[j])
                ax.set_ylim(*ranges[i])
            ax.tick_params(labelsize=7)
            if i == d - 1:
                ax.set_xlabel(names[columns[j]])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[columns[i]])
            elif j > 0:
                ax.set_yticklabels([])
    if w is not None:
        # in the empty upper triangle; a legend beside a panel would widen its grid column
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", fontsize=9)
    shown = "" if d == len(names) else f" ({d} of {len(names)} variables)"
    fig.suptitle(f"{title}: marginals of q, {len(s):,} samples{shown}")
    return fig


# --- compare (the paper's Figure 3) --------------------------------------------------------------


@dataclass
class ComparePanel:
    """One fit in a compare figure: its density on the row's window (2-D: (n, n); 1-D: on xs)."""

    flow: str
    K: int
    q: Tensor
    bound: float  # −ELBO, the variational bound F at β = 1
    bound_se: float
    kl: float | None = None


@dataclass
class CompareRow:
    """One target in a compare figure, with its fits in column order."""

    label: str
    names: Sequence[str]
    window: Window  # 1-D: window[0] is the range
    p: Tensor | None  # the target's density on the same grid, where it can be drawn
    log_z: float | None
    panels: list[ComparePanel] = field(default_factory=list)
    xs: Tensor | None = None  # 1-D rows: the points of the curves


def compare_figure(rows: Sequence[CompareRow], title: str = "") -> Figure:
    """The paper's Figure 3: one row per target: the target, one panel per (flow, K), and the final
    bound F = −ELBO against K per flow type, with −ln Z as its floor and KL = F + ln Z on the right
    axis where ln Z is known."""
    cols = 2 + max(len(r.panels) for r in rows)
    fig, axes = plt.subplots(
        len(rows),
        cols,
        figsize=(2.5 * cols + 0.8, 2.5 * len(rows) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for r, row in enumerate(rows):
        ax_row = axes[r]
        images = [row.p] + [pan.q for pan in row.panels]
        drawn = [float(img.max()) for img in images if img is not None]
        vmax = max(drawn, default=1.0) or 1.0  # one scale per row: nothing clipped
        labels = ["target"] + [f"{pan.flow} K = {pan.K}" for pan in row.panels]
        for c, (img, label) in enumerate(zip(images, labels, strict=True)):
            ax = ax_row[c]
            if row.xs is not None:  # 1-D: curves
                if row.p is not None:
                    ax.plot(row.xs.numpy(), row.p.numpy(), color="k", ls="--", lw=1)
                if img is not None and c > 0:
                    ax.plot(row.xs.numpy(), img.numpy(), color="C0")
                ax.set_xlim(*row.window[0])
                ax.set_ylim(0, 1.05 * vmax)
                ax.set_yticks([])
            elif img is not None:
                _image(ax, img, row.window, 0.0, vmax, "viridis")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.text(0.5, 0.5, "not drawable\n(D > 2)", ha="center", va="center", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            if c > 0 and row.panels[c - 1].kl is not None:
                label += f"\nKL {row.panels[c - 1].kl:.3f}"
            ax.set_title(label, fontsize=9)
        ax_row[0].set_ylabel(row.label, fontsize=10)
        for ax in ax_row[len(images) : cols - 1]:
            ax.set_visible(False)
        _bound_panel(ax_row[-1], row)
    if title:
        fig.suptitle(title)
    return fig


def _bound_panel(ax: plt.Axes, row: CompareRow) -> None:
    for i, kind in enumerate(dict.fromkeys(p.flow for p in row.panels)):
        ps = sorted((p for p in row.panels if p.flow == kind), key=lambda p: p.K)
        ax.errorbar(
            [p.K for p in ps],
            [p.bound for p in ps],
            yerr=[p.bound_se for p in ps],
            marker="o",
            ms=4,
            lw=1.2,
            capsize=2,
            color=f"C{i}",
            label=kind,
        )
    if row.log_z is not None:
        log_z = row.log_z
        ax.axhline(-log_z, color="k", ls="--", lw=1, label="−ln Z")
        right = ax.secondary_yaxis("right", functions=(lambda f: f + log_z, lambda kl: kl - log_z))
        right.set_ylabel("KL(q‖p)", fontsize=8)
        right.tick_params(labelsize=7)
    ax.set_xscale("log", base=2)
    ks = sorted({p.K for p in row.panels})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K", fontsize=8)
    ax.set_ylabel("bound −ELBO", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("bound against K", fontsize=9)
    ax.legend(fontsize=7)
