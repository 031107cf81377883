"""Figures, drawn headless (Agg) and written atomically.

Each figure has a builder that returns a matplotlib Figure (tests count its panels) and is written
by ``save_figure`` in the format its file name ends with (png, pdf or svg):

* ``density_2d_figure``: target p | fitted q (exact) on one colour scale | q − p on its own;
* ``density_1d_figure``: target and fitted densities as curves, with a histogram of samples;
* ``layers_figure``: the samples after layers 0, 1, …, K, coloured by where they started;
* ``loss_figure``: the β = 1 loss (−ELBO) per step, the annealed loss, β, and −ln Z as its floor,
  on a y-range set by the fitted part of the β = 1 loss (what lies beyond is marked and named);
* ``pairs_figure``: a corner plot of 1-D and 2-D marginals (D > 2);
* ``compare_figure``: the paper's Figure 3 layout: per target, the target, the fitted density per
  flow type and K, and the bound against K.

Titles, which hold the target's formula, are wrapped to the figure's width (``fit_title``).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, MaxNLocator
from PIL import Image
from torch import Tensor

from nfcli.diagnostics import Grid, Window, grid_points
from nfcli.io import atomic_write
from nfcli.train import beta_schedule

FORMATS = ("png", "pdf", "svg")
DPI = 120
LAYER_COLOURS = 8  # layers.png colours the draws by their start's radius in this many bands


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI, palette: bool = False) -> Path:
    """Write ``fig`` atomically in the format named by the file's suffix, then close it. With
    ``palette``, a PNG is stored with 256 indexed colours (a quarter of RGBA's bytes before
    compression): for figures drawn in few colours, such as layers.png, the pixels barely change
    (only the shades of antialiased text edges beyond 256 are merged)."""
    buf = io.BytesIO()
    fmt = Path(path).suffix.lstrip(".") or "png"
    indexed = palette and fmt == "png"
    # indexed: the raw pixels, rather than a PNG to decode again (Agg draws int(inches · dpi))
    fig.savefig(buf, format="rgba" if indexed else fmt, dpi=dpi)
    if indexed:
        size = (int(fig.get_figwidth() * dpi), int(fig.get_figheight() * dpi))
        raw = buf.getvalue()
        if len(raw) == 4 * size[0] * size[1]:
            image = Image.frombuffer("RGBA", size, raw, "raw", "RGBA", 0, 1).convert("RGB")
        else:  # another size (a matplotlibrc's savefig.bbox: tight): through a PNG
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
            image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        buf = io.BytesIO()
        # median cut (0) without dithering (0): flat colours stay flat
        image.quantize(256, method=0, dither=0).save(buf, format="png", dpi=(dpi, dpi))
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return Path(path)


# --- titles --------------------------------------------------------------------------------------


def fit_title(fig: Figure, text: str, max_lines: int = 3, **kwargs) -> Text:
    """Set ``text`` as ``fig``'s title (suptitle), made to fit its width by ``fit_text``."""
    return fit_text(fig, fig.suptitle(text, **kwargs), max_lines)


def fit_text(fig: Figure, artist: Text, max_lines: int = 3, room: float = 0.96) -> Text:
    """Wrap ``artist``'s text at spaces so that each line fits in ``room`` of ``fig``'s width; a
    text that would need more than ``max_lines`` lines is shortened in its middle with '…' (its
    end, which names the flow, K and KL, is kept). Measured with the figure's own renderer, so it
    holds at any dpi (text and figure scale together)."""
    text = artist.get_text()
    if not text:
        return artist
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width * room
    measured = artist.get_window_extent(renderer).width
    chars = len(text) if measured <= width else max(8, int(len(text) * width / measured))
    while True:
        artist.set_text("\n".join(_wrap(text, chars, max_lines)))
        if artist.get_window_extent(renderer).width <= width or chars <= 8:
            return artist
        chars = max(8, int(chars * 0.9))


def _wrap(text: str, chars: int, max_lines: int) -> list[str]:
    """``text`` in lines of at most ``chars`` characters, at most ``max_lines`` of them: when it
    needs more, two thirds of what fits is kept from its start and one third from its end."""
    lines = textwrap.wrap(text, chars, break_on_hyphens=False)
    budget = chars * max_lines - 3
    while len(lines) > max_lines and budget > 2:
        head = budget * 2 // 3
        short = text[:head].rstrip() + " … " + text[len(text) - (budget - head) :].lstrip()
        lines = textwrap.wrap(short, chars, break_on_hyphens=False)
        budget -= max(1, chars // 4)
    return lines[:max_lines]


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
    return log_density_grid(fn, window, n, dtype, device).exp()


def log_density_grid(
    fn: Callable[[Tensor], Tensor],
    window: Window,
    n: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``density_grid``'s logarithm: fn on the n×n cell midpoints of ``window`` as an (n, n) CPU
    float64 array (rows are y), NaN as −∞."""
    with torch.no_grad():
        values = fn(grid_points(window, n).to(device=device, dtype=dtype)).double().cpu()
    return torch.nan_to_num(values, nan=-math.inf).reshape(n, n)


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
    """Target p | fitted q | q − p: (n, n) density images on ``window``. p and q share one colour
    scale (0 to the larger maximum); the difference has its own diverging one, centred at 0 and
    symmetric (±max |q − p|), so that a difference such as a tail deficit of q (blue) shows at its
    own size rather than as a pale fraction of the densities' peak. Without p, q alone."""
    panels = [("fitted q (exact density)", q)]
    if p is not None:
        panels = [("target p", p), *panels]
    vmax = max(float(img.max()) for _, img in panels) or 1.0
    shown = [(label, img, "viridis", 0.0, vmax) for label, img in panels]
    if p is not None:
        diff = q - p
        dmax = float(diff.abs().max()) or 1.0
        shown.append(("difference q − p (own scale)", diff, "RdBu_r", -dmax, dmax))
    (x0, x1), (y0, y1) = window
    height = min(6.0, max(2.5, 4.0 * (y1 - y0) / (x1 - x0)))
    fig, axes = plt.subplots(
        1,
        len(shown),
        figsize=(4.2 * len(shown) + 1.0, height + 0.7),
        squeeze=False,
        layout="constrained",
    )
    for ax, (label, img, cmap, lo, hi) in zip(axes[0], shown, strict=True):
        im = _image(ax, img, window, lo, hi, cmap)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        fig.colorbar(im, ax=ax, shrink=0.85)
    fit_title(fig, title if kl is None else f"{title}   KL(q‖p) = {kl:.4f} nats")
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
    samples of q. When q peaks more than 4× above p (q has collapsed onto part of p), the axis
    stops at 4× p's peak, so that p stays readable, and says where q's peak went."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    _, _, bars = ax.hist(
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
        p_top = float(torch.nan_to_num(p.double(), nan=0.0, posinf=0.0).max())
        q_top = max([float(q.max())] + [bar.get_height() for bar in bars])
        if p_top > 0 and q_top > 4 * p_top:
            ax.set_ylim(0, 4.4 * p_top)
            ax.text(
                0.02,
                0.97,
                f"q's peak (≥ {q_top:.3g}) is above the axis",
                transform=ax.transAxes,
                va="top",
                fontsize=8,
                color="C0",
            )
    ax.set_xlim(xs[0].item(), xs[-1].item())
    ax.set_xlabel(name)
    ax.set_ylabel("density")
    fit_title(fig, title, fontsize="large")
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


SCALE_RATIO = 4.0  # square panels drawn to scale while the two ranges differ at most this much


def square_up(window: Window) -> Window:
    """A 2-D window whose panels can be drawn to scale (equal units on both axes, in square
    panels): the narrower range widened about its centre to the wider one's, where they differ
    at most SCALE_RATIO-fold; else ``window`` as it is (a strip of a figure would show nothing)."""
    (x0, x1), (y0, y1) = window
    wx, wy = x1 - x0, y1 - y0
    if not (wx > 0 and wy > 0) or max(wx, wy) > SCALE_RATIO * min(wx, wy):
        return window
    half = max(wx, wy) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return ((cx - half, cx + half), (cy - half, cy + half))


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
    base mean (in ``LAYER_COLOURS`` bands and without antialiasing: with so few colours a 33-panel
    PNG takes a fraction of the bytes, and ``save_figure(..., palette=True)`` stores it indexed).
    In 1-D each panel plots z_k against z_0 (the map so far); above 2-D, the two ``columns`` are
    shown. All panels share one window (the draws' extent over the shown layers)."""
    dim = zs[0].shape[1]
    pts = [(z[:, columns[0]], z[:, columns[1]]) if dim > 1 else (z[:, 0], zs[0][:, 0]) for z in zs]
    if window is None:
        xs = torch.cat([pts[k][0] for k in layers]).double()
        ys = torch.cat([pts[k][1] for k in layers]).double()
        window = sample_window(torch.stack([xs, ys], 1), pad=0.05)
        if dim > 1:  # square panels: equal units on both axes (a --window is kept as given)
            window = square_up(window)
    if dim > 1:
        (x0, x1), (y0, y1) = window
        if not math.isclose(x1 - x0, y1 - y0):
            title += f" (axes not to scale: their ranges differ over {SCALE_RATIO:g}-fold)"
    n = len(layers)
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    # a fixed layout in inches (not "constrained", which measures every panel's ticks and titles
    # again and again: most of a profiled save at K = 32, though a whole fit's figure time did not
    # change measurably, benchmarks/overhead.py): panels of 1.8 in, 0.3 in between
    # for the titles, room for tick labels and names left and below, the colour bar right
    width, height = 0.75 + 2.1 * cols + 1.0, 0.55 + 2.1 * rows + 0.75
    # the panels' limits and ticks are set on each (not shared: a shared axis' every limit lookup
    # visits all its siblings, which costs most with ~33 panels); inner tick labels are hidden as
    # sharing did (label_outer: only the bottom row's x and the left column's y labelled)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 1.0 / width,
        bottom=0.55 / height,
        top=1 - 0.75 / height,
        wspace=0.3 / 1.8,
        hspace=0.3 / 1.8,
    )
    lo, hi = torch.quantile(radius.double(), torch.tensor([0.01, 0.99], dtype=torch.float64))
    xticks, yticks = (
        [t for t in MaxNLocator(nbins=4).tick_values(a, b) if a <= t <= b] for a, b in window
    )
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
            cmap=matplotlib.colormaps["viridis"].resampled(LAYER_COLOURS),
            vmin=float(lo),
            vmax=float(hi),
            linewidths=0,
            rasterized=True,
        )
        scatter.set_antialiased(False)  # few colours, whole pixels: the PNG compresses well
        # y = 1: where matplotlib would put it (no ticks on top), without measuring every panel
        ax.set_title("base z₀" if k == 0 else f"after layer {k}", fontsize=9, y=1.0)
        ax.set_xlim(*window[0])
        ax.set_ylim(*window[1])
        ax.label_outer()  # tick labels (and offsets) on the outer edges, as sharing did
        ax.tick_params(labelsize=7)
        # the ticks, fixed once, rather than recomputed for every panel at every draw
        ax.xaxis.set_major_locator(FixedLocator(xticks))
        ax.yaxis.set_major_locator(FixedLocator(yticks))
    for ax in axes[-1]:
        ax.set_xlabel(names[columns[0]] if dim > 1 else names[0], fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(names[columns[1]] if dim > 1 else f"{names[0]} at z₀", fontsize=8)
    if scatter is not None:
        bar = fig.add_axes(
            (
                1 - 0.8 / width,
                0.55 / height + 0.2 * (1 - 1.3 / height),
                0.12 / width,
                0.6 * (1 - 1.3 / height),
            ),
            label="<colorbar>",  # as fig.colorbar(ax=...) names the axes it makes
        )
        fig.colorbar(scatter, cax=bar, label="start: ‖(z₀ − μ)/σ‖")
    shown = f" ({names[columns[0]]}, {names[columns[1]]} of D = {dim})" if dim > 2 else ""
    fit_title(fig, f"{title}: samples after each layer{shown}")
    return fig


# --- loss ----------------------------------------------------------------------------------------


def loss_range(
    loss_beta1: Tensor, log_z: float | None, skip: float = 0.05, q: float = 0.98
) -> tuple[float, float]:
    """The loss figure's y-range: from the β = 1 loss after the first ``skip`` of the steps, its
    (1 − ``q``)–``q`` quantiles, widened to hold its last value and −ln Z, padded by a tenth on
    each side. Neither a few outliers nor the early steps (where F_β, taken at small β, and the
    loss of the start are far off) set it. (n,) → (lo, hi); (0, 1) when nothing is finite."""
    tail = loss_beta1[int(skip * len(loss_beta1)) :].double()
    tail = tail[torch.isfinite(tail)]
    if not len(tail):
        return (0.0, 1.0)
    lo, hi = (float(v) for v in torch.quantile(tail, torch.tensor([1 - q, q]).double()))
    ends = [float(tail[-1])] + ([] if log_z is None else [-log_z])
    lo, hi = min(lo, *ends), max(hi, *ends)
    pad = 0.1 * (hi - lo) or 0.5 * max(1.0, abs(hi))
    return (lo - pad, hi + pad)


def _off_axis(steps: Tensor, y: Tensor, lo: float, hi: float) -> str:
    """Where ``y`` leaves [lo, hi]: e.g. 'steps 1–2,950 below' (empty when nowhere)."""
    parts = []
    for side, off in (("below", y < lo), ("above", y > hi)):
        if off.any():
            at = steps[off]
            n, first, last = len(at), int(at[0]), int(at[-1])
            where = (
                f"steps {first:,}–{last:,}"
                if n == last - first + 1
                else (f"{n:,} steps in {first:,}–{last:,}")
            )
            parts.append(f"{where} {side}" if n > 1 else f"step {first:,} {side}")
    return ", ".join(parts)


def loss_figure(
    loss: Tensor,
    loss_beta1: Tensor,
    anneal: int,
    log_z: float | None,
    title: str,
) -> Figure:
    """F_β and the negative ELBO F(β=1) per step (smoothed); −ln Z is the floor F approaches. The
    y-range is ``loss_range``'s; what lies beyond it is clipped, marked at the axis' edge and named
    in a note under the curves."""
    n = len(loss)
    steps = torch.arange(1, n + 1)
    w = max(1, n // 200)

    def smooth(x: Tensor) -> Tensor:
        x = torch.where(torch.isfinite(x), x, torch.nan).double()
        kernel = torch.ones(1, 1, w, dtype=torch.float64) / w
        return torch.nn.functional.conv1d(x[None, None], kernel)[0, 0]

    lo, hi = loss_range(smooth(loss_beta1), log_z)
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    curves = [
        ("−ELBO = F(β = 1)", "−ELBO", loss_beta1, 1.2, 1.0),
        ("annealed objective F_β", "F_β", loss, 1, 0.7),
    ]
    notes = []
    for i, (label, short, values, lw, alpha) in enumerate(curves):
        x, y = steps[w - 1 :], smooth(values)
        ax.plot(x.numpy(), y.numpy(), label=label, lw=lw, alpha=alpha, color=f"C{i}")
        for edge, off in ((lo, y < lo), (hi, y > hi)):
            if not off.any():
                continue
            marks = x[off][:: max(1, int(off.sum()) // 8)]  # a few marks along the edge
            ax.plot(
                marks.numpy(),
                [edge] * len(marks),
                ls="none",
                marker="v" if edge == lo else "^",
                ms=3,
                color=f"C{i}",
                alpha=alpha,
                clip_on=False,
            )
        where = _off_axis(x, y, lo, hi)
        if where:
            notes.append(f"{short} {where}")
    if log_z is not None:
        ax.axhline(-log_z, color="k", ls="--", lw=1, label=f"−ln Z = {-log_z:.4f} (the floor)")
    ax.set_ylim(lo, hi)
    ax.set_xlim(0, n + 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats)")
    if notes:  # under the axis, where it hides no curve
        note = fig.supxlabel("off the axis (▲▼ at its edge): " + "; ".join(notes), fontsize=8)
        fit_text(fig, note, max_lines=2)
    fit_title(fig, title)
    if anneal:
        ax2 = ax.twinx()
        ax2.plot(steps.numpy(), beta_schedule(steps - 1, anneal).numpy(), color="gray", lw=0.8)
        ax2.set_ylabel("β", color="gray")
        ax2.set_ylim(0, 1.05)
        ax.set_zorder(ax2.get_zorder() + 1)  # the losses and their legend over β
        ax.patch.set_visible(False)
    ax.legend(loc="upper right", framealpha=0.9)
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
        # in the empty upper triangle, right of the first panel and under the title; out of the
        # layout, since a legend beside a panel would widen its grid column
        legend = axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=9)
        legend.set_in_layout(False)
    shown = "" if d == len(names) else f" ({d} of {len(names)} variables)"
    fit_title(fig, f"{title}: marginals of q, {len(s):,} samples{shown}")
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
class McmcPanel:
    """MCMC draws in a compare figure, as a histogram density: 2-D: (bins, bins) over the row's
    window (rows: y); 1-D: ``density`` per bin between ``edges``. ``label`` names the sampler."""

    label: str
    density: Tensor | None  # None where D > 2 (not drawable)
    edges: Tensor | None = None  # 1-D only


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
    mcmc: McmcPanel | None = None  # nfcli compare --mcmc: drawn after the target


def compare_figure(rows: Sequence[CompareRow], title: str = "") -> Figure:
    """The paper's Figure 3: one row per target: the target, its MCMC draws (with --mcmc), one
    panel per (flow, K), and the final bound F = −ELBO against K per flow type, with −ln Z as its
    floor and KL = F + ln Z on the right axis where ln Z is known."""
    extra = int(any(r.mcmc is not None for r in rows))
    cols = 2 + extra + max(len(r.panels) for r in rows)
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
        kls = [None] + [pan.kl for pan in row.panels]
        if extra:  # the MCMC column, second: what the flows should look like
            m = row.mcmc
            images.insert(1, m.density if m is not None else None)
            labels.insert(1, m.label if m is not None else "")
            kls.insert(1, None)
        for c, (img, label, kl) in enumerate(zip(images, labels, kls, strict=True)):
            ax = ax_row[c]
            if extra and c == 1 and row.mcmc is not None and row.mcmc.edges is not None:
                ax.stairs(row.mcmc.density.numpy(), row.mcmc.edges.numpy(), color="C2", fill=True)
                if row.p is not None:
                    ax.plot(row.xs.numpy(), row.p.numpy(), color="k", ls="--", lw=1)
                ax.set_xlim(*row.window[0])
                ax.set_ylim(0, 1.05 * vmax)
                ax.set_yticks([])
            elif row.xs is not None:  # 1-D: curves
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
            if kl is not None:
                label += f"\nKL {kl:.3f}"
            ax.set_title(label, fontsize=9)
        ax_row[0].set_ylabel(row.label, fontsize=10)
        for ax in ax_row[len(images) : cols - 1]:
            ax.set_visible(False)
        _bound_panel(ax_row[-1], row)
    if title:
        fit_title(fig, title)
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
