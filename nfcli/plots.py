"""Figures, drawn headless (Agg) and written atomically: density.png and loss.png."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from nfcli.diagnostics import grid_points
from nfcli.io import atomic_write
from nfcli.train import beta_schedule


def _save(fig: plt.Figure, path: str | Path, dpi: int = 120) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def display_window(samples: Tensor, pad: float = 0.2) -> tuple[float, float, float, float]:
    """The samples' 0.1%–99.9% extent, padded by ``pad`` of the larger span on each side."""
    s = samples.detach().cpu().double()
    lo, hi = torch.quantile(s, 0.001, dim=0), torch.quantile(s, 0.999, dim=0)
    margin = float((hi - lo).max().clamp_min(1e-3)) * pad
    return (
        lo[0].item() - margin,
        hi[0].item() + margin,
        lo[1].item() - margin,
        hi[1].item() + margin,
    )


def plot_density_2d(
    path: str | Path,
    energy_fn: Callable[[Tensor], Tensor] | None,
    log_z: float | None,
    log_q_fn: Callable[[Tensor], Tensor],
    samples: Tensor,
    names: Sequence[str],
    title: str,
    kl: float | None = None,
    n: int = 300,
) -> None:
    """Target p = exp(−U − ln Z), the fitted q (exact, from the flow's inverse) and q − p, on one
    colour scale (the difference on its symmetric version), over a window around the samples."""
    x0, x1, y0, y1 = display_window(samples)
    pts = grid_points(((x0, x1), (y0, y1)), n).to(samples.dtype)
    with torch.no_grad():
        q = log_q_fn(pts).double().exp().reshape(n, n)
        panels = [("fitted q (exact density)", q)]
        if energy_fn is not None and log_z is not None:
            u = energy_fn(pts).double()
            p = torch.exp(-torch.nan_to_num(u, nan=math.inf) - log_z).reshape(n, n)
            panels = [("target p", p), *panels]
    vmax = max(float(img.max()) for _, img in panels)
    shown = [(label, img, "viridis", 0.0) for label, img in panels]
    if len(panels) == 2:
        shown.append(("difference q − p", panels[1][1] - panels[0][1], "RdBu_r", -vmax))
    aspect = (y1 - y0) / (x1 - x0)
    height = min(6.0, max(2.5, 4.0 * aspect))
    fig, axes = plt.subplots(
        1,
        len(shown),
        figsize=(4.2 * len(shown) + 1.0, height + 0.7),
        squeeze=False,
        layout="constrained",
    )
    for ax, (label, img, cmap, vmin) in zip(axes[0], shown, strict=True):
        im = ax.imshow(
            img.numpy(),
            origin="lower",
            extent=(x0, x1, y0, y1),
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            interpolation="nearest",
        )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(title if kl is None else f"{title}   KL(q‖p) = {kl:.4f} nats")
    _save(fig, path)


def plot_density_1d(
    path: str | Path,
    energy_fn: Callable[[Tensor], Tensor] | None,
    log_q_fn: Callable[[Tensor], Tensor],
    samples: Tensor,
    name: str,
    title: str,
    log_z: float | None,
) -> None:
    """The target density (normalised by ``log_z``, or by quadrature on the plotted range), the
    fitted density (exact, from the flow's inverse) and a histogram of samples of q."""
    s = samples.detach().cpu().double().reshape(-1)
    lo, hi = torch.quantile(s, 0.0005).item(), torch.quantile(s, 0.9995).item()
    pad = 0.2 * (hi - lo)
    xs = torch.linspace(lo - pad, hi + pad, 1000, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(
        s.numpy(),
        bins=150,
        range=(xs[0].item(), xs[-1].item()),
        density=True,
        alpha=0.3,
        label="samples of q",
    )
    with torch.no_grad():
        q = log_q_fn(xs[:, None].to(samples.dtype)).double().exp()
    ax.plot(xs.numpy(), q.numpy(), label="fitted q (exact)", color="C0")
    if energy_fn is not None:
        with torch.no_grad():
            neg_u = -energy_fn(xs[:, None].to(samples.dtype)).double()
        norm = (
            log_z
            if log_z is not None
            else torch.logsumexp(neg_u, 0).item() + math.log((xs[1] - xs[0]).item())
        )
        ax.plot(xs.numpy(), (neg_u - norm).exp().numpy(), label="target p", color="k", ls="--")
    ax.set_xlabel(name)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def plot_loss(
    path: str | Path,
    loss: Tensor,
    loss_beta1: Tensor,
    anneal: int,
    log_z: float | None,
    title: str,
) -> None:
    """F_β and the negative ELBO F(β=1) per step (smoothed); −ln Z is the floor F approaches."""
    n = len(loss)
    steps = torch.arange(1, n + 1)
    w = max(1, n // 200)

    def smooth(x: Tensor) -> Tensor:
        x = torch.where(torch.isfinite(x), x, torch.nan).double()
        kernel = torch.ones(1, 1, w, dtype=torch.float64) / w
        return torch.nn.functional.conv1d(x[None, None], kernel)[0, 0]

    fig, ax = plt.subplots(figsize=(7, 4))
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
    _save(fig, path)
