"""The figures of a VAE (``nfcli vae``): learning curves, image grids, −ln p(x) against K."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor

from nfcli.plots import fit_title
from nfcli.vae.train import VaeHistory


def curves_figure(history: VaeHistory, title: str, anneal: int = 0) -> Figure:
    """The training ELBO (mean of each epoch's updates, one draw per image) and the validation
    bound (after each epoch) against the updates done: the seed work's learning curves, on the
    range of their last three quarters; a dotted line where β reaches 1 (``anneal`` updates)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ax.plot(history.updates, history.train_elbo, "-", color="C0", label="training ELBO")
    ax.plot(history.updates, history.valid_elbo, "-", color="C1", label="validation bound")
    quarter = len(history.updates) // 4  # the first epochs (β still small) are far below
    later = [
        v for v in history.train_elbo[quarter:] + history.valid_elbo[quarter:] if math.isfinite(v)
    ]
    if later:
        lo, hi = min(later), max(later)
        pad = 0.05 * max(hi - lo, 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    if 0 < anneal < (history.updates[-1] if history.updates else 0):
        ax.axvline(anneal, color="0.6", ls=":", lw=1)
        ax.text(anneal, 0.02, " β = 1", transform=ax.get_xaxis_transform(), color="0.4")
    ax.set_xlabel("updates")
    ax.set_ylabel("nats per image")
    ax.legend()
    fit_title(fig, title, fontsize="large")
    return fig


FRAME = "0.7"  # the grey of each image's frame


def grid_figure(images: Tensor, shape: tuple[int, int], title: str, columns: int = 10) -> Figure:
    """Images (N, H·W) with values in [0, 1] as a grid of ``columns`` per row (grey, 1 = black
    ink on white, as MNIST is usually shown), each in a thin grey frame with a gap between them:
    white on white, touching images read as one ("\\" beside "/" as "V")."""
    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * 0.8, rows * 0.8 + 0.5), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        ax.imshow(images[k].reshape(shape).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(FRAME)
            spine.set_linewidth(0.6)
    fig.subplots_adjust(wspace=0.15, hspace=0.15, top=1 - 0.45 / (rows * 0.8 + 0.5))
    fit_title(fig, title)
    return fig


def reconstruction_figure(
    originals: Tensor, reconstructions: Tensor, shape: tuple[int, int], title: str
) -> Figure:
    """Pairs of rows: test images (binarised) above the decoder's means at one draw of q(·|x)."""
    columns = min(10, len(originals))
    rows = []
    for i in range(0, len(originals), columns):
        rows += [originals[i : i + columns], reconstructions[i : i + columns]]
    return grid_figure(_stack(rows, columns), shape, title, columns)


def _stack(rows: Sequence[Tensor], columns: int) -> Tensor:
    padded = []
    for r in rows:
        if len(r) < columns:
            r = torch.cat([r, r.new_zeros(columns - len(r), r.shape[1])])
        padded.append(r)
    return torch.cat(padded)


def nll_figure(Ks: Sequence[int], nll: Sequence[float], se: Sequence[float], title: str) -> Figure:
    """The test −ln p(x) (± 2 standard errors) against the flow's length K (K = 0: the diagonal
    Gaussian posterior)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8), layout="constrained")
    ax.errorbar(list(Ks), list(nll), yerr=[2 * s for s in se], fmt="o-", capsize=3, color="C0")
    ax.set_xlabel("K (flow layers; 0 = diagonal Gaussian)")
    ax.set_ylabel("test −ln p(x), nats")
    ax.set_xticks(list(Ks))
    fit_title(fig, title, fontsize="large")
    return fig
