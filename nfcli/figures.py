"""Which figures a fitted flow gets, and the numbers they are drawn from (``nfcli plot``).

From a checkpoint (and the energy, where it may be run), into one folder:

* ``density``: D = 2, target p | fitted q | q − p (exact densities on a grid); D = 1, the two
  densities as curves;
* ``layers``: the samples after layers 0, 1, …, K;
* ``loss``: the β = 1 loss (−ELBO) over the steps, with β and −ln Z;
* ``pairs``: D > 2, a corner plot of q's marginals (and p's, by importance reweighting).

``FigureOptions`` holds what the user may choose: format, dpi, window, which layers and variables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nfcli.checkpoint import Checkpoint
from nfcli.devices import generator
from nfcli.diagnostics import LogQGrid, Window, choose_window, log_prob, psis
from nfcli.energy import Energy
from nfcli.errors import NfcliError
from nfcli.flows import Flow
from nfcli.plots import (
    DPI,
    FORMATS,
    default_layers,
    density_1d_figure,
    density_2d_figure,
    density_grid,
    layers_figure,
    log_density_grid,
    loss_figure,
    mass_window,
    normalised_curve,
    pairs_figure,
    sample_window,
    save_figure,
    union,
)
from nfcli.targets import TARGETS

N_SAMPLES = 10_000  # as samples.npy (same seed, same draws)
N_LAYER_SAMPLES = 3_000
GRID = 300
MAX_PAIRS = 8  # variables in pairs.png unless --show names them


@dataclass
class FigureOptions:
    """format: png, pdf or svg; dpi; window: the 2-D extent ((x0, x1), (y0, y1)) of density and
    layers (1-D: window[0] is the range); layers: which layers to draw; show: the variables of
    pairs.png (and the two of layers.png) when D > 2."""

    format: str = "png"
    dpi: int = DPI
    window: Window | None = None
    layers: list[int] | None = None
    show: list[str] | None = None

    def validate(self, names: tuple[str, ...] | None = None, K: int | None = None) -> None:
        if self.format not in FORMATS:
            raise NfcliError(
                f"--format {self.format!r} is not a figure format nfcli writes; choose one of "
                f"{', '.join(FORMATS)}."
            )
        if not 20 <= self.dpi <= 1200:
            raise NfcliError(f"--dpi {self.dpi} is out of range; use 20 to 1200, e.g. --dpi 150.")
        if K is not None and self.layers is not None:
            bad = [k for k in self.layers if not 0 <= k <= K]
            if bad or not self.layers:
                raise NfcliError(
                    f"--layers: {', '.join(map(str, bad)) or 'nothing'} given, but this flow has "
                    f"layers 0 (the base) to {K}. Pass numbers in that range, e.g. "
                    f"--layers 0,1,{K}."
                )
        if names is not None and self.show is not None:
            unknown = [v for v in self.show if v not in names]
            if unknown or len(set(self.show)) != len(self.show) or len(self.show) < 2:
                raise NfcliError(
                    f"--show {','.join(self.show)}: name two or more different variables of this "
                    f"model ({', '.join(names)})"
                    + (f"; unknown: {', '.join(unknown)}." if unknown else ".")
                )


def parse_window(text: str) -> Window:
    """'a,b' (both axes, or the range in 1-D) or 'x0,x1,y0,y1' → ((x0, x1), (y0, y1))."""
    try:
        v = [float(t) for t in text.split(",")]
    except ValueError:
        v = []
    ok = len(v) in (2, 4) and all(math.isfinite(x) for x in v)
    if ok:
        x0, x1, y0, y1 = v if len(v) == 4 else v + v
        ok = x0 < x1 and y0 < y1
    if not ok:
        raise NfcliError(
            f"--window {text!r} is not a window: give lo,hi for both axes (e.g. --window=-4,4) or "
            "x0,x1,y0,y1 (e.g. --window=-4,4,-3,3), with lo < hi."
        )
    return ((x0, x1), (y0, y1))


def parse_ints(text: str, option: str) -> list[int]:
    """'2,8,32' → [2, 8, 32]."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise NfcliError(
            f"{option} {text!r} must be comma-separated whole numbers, e.g. {option} 2,8,32."
        ) from None
    return values


def preset_window(energy_source: dict) -> Window | None:
    """The window a built-in target is drawn on (the paper's (−4, 4)² for U1–U4)."""
    name = energy_source.get("name")
    return TARGETS[name].window if name in TARGETS else None


def window_2d(
    samples: Tensor, energy: Energy | None, log_z: float | None
) -> tuple[Window, float | None]:
    """Where to draw a 2-D fit, if no window is chosen: where q's samples and the target's mass
    are. Finds ln Z by quadrature on the way when the energy is given and ln Z is not."""
    window = sample_window(samples)
    if energy is not None:
        grid = choose_window(samples, energy)
        window = union(window, mass_window(grid))
        log_z = grid.log_z if log_z is None else log_z
    return window, log_z


def density_q(flow: Flow, window: Window) -> LogQGrid:
    """ln q on density.png's GRID × GRID cells of ``window``, computed where the flow is (device
    and dtype): the flow inverted at every cell. ``nfcli.run.run_fit`` computes it once for the
    figure and the trust report's KL(p‖q) and TV."""
    device, dtype = flow.base.loc.device, flow.base.loc.dtype
    return LogQGrid(window, GRID, log_density_grid(flow.log_prob, window, GRID, dtype, device))


def write_figures(
    ckpt: Checkpoint,
    energy: Energy | None,
    out: Path,
    options: FigureOptions | None = None,
    known: LogQGrid | None = None,
) -> list[Path]:
    """Draw a checkpoint's figures into ``out``; without ``energy``, q alone. The numbers are
    computed where ``ckpt.flow`` is (device and dtype), the drawing on the CPU. ``known``: ln q
    on density.png's grid (``density_q``), used if it is on the window drawn. Returns the
    paths."""
    opts = options or FigureOptions()
    flow, names, report, cfg = ckpt.flow, ckpt.names, ckpt.report, ckpt.config
    opts.validate(names, cfg.K)
    title = f"{report.target or ''}: {cfg.flow} flow, K = {cfg.K}"
    quadrature = report.quadrature
    log_z = quadrature.log_z if quadrature is not None else report.log_z_reference
    path = {name: out / f"{name}.{opts.format}" for name in ("density", "layers", "loss", "pairs")}
    shown = (
        [names.index(v) for v in opts.show] if opts.show else list(range(min(flow.dim, MAX_PAIRS)))
    )
    device, dtype = flow.base.loc.device, flow.base.loc.dtype
    with torch.no_grad():
        draws, log_q = flow.rsample(N_SAMPLES, generator(device, cfg.seed))
    samples = draws.cpu()
    figures = []
    if flow.dim == 2:
        window = opts.window or preset_window(ckpt.energy_source)
        if window is None or (energy is not None and log_z is None):
            found, log_z = window_2d(samples, energy, log_z)
            window = window or found
        if known is None or (known.window, known.n) != (window, GRID):
            known = density_q(flow, window)
        q = known.log_q.exp()
        p = None
        if energy is not None and log_z is not None:
            p = density_grid(lambda x: -energy(x) - log_z, window, GRID, dtype, device)
        figures.append(
            (path["density"], density_2d_figure(window, q, p, names, title, report.kl_qp))
        )
    elif flow.dim == 1:
        (lo, hi) = opts.window[0] if opts.window else range_1d(samples)
        if energy is not None and not opts.window:  # where p is too, should q have missed it
            found = mass_range_1d(energy, (lo, hi), dtype, device)
            if found is not None:
                pad = 0.2 * (found[1] - found[0])
                lo, hi = min(lo, found[0] - pad), max(hi, found[1] + pad)
        xs = torch.linspace(lo, hi, 1000, dtype=torch.float64)
        q = log_prob(flow, xs[:, None].to(device)).exp().cpu()
        p = None
        if energy is not None:
            with torch.no_grad():
                neg_u = -energy(xs[:, None].to(device=device, dtype=dtype)).cpu()
            p = normalised_curve(neg_u, xs, log_z)
        figures.append((path["density"], density_1d_figure(xs, q, p, samples, names[0], title)))
    else:
        weights = _importance_weights(draws, log_q, energy) if energy is not None else None
        figures.append((path["pairs"], pairs_figure(samples, names, shown, title, weights)))
    zs, radius = flow.trajectory(N_LAYER_SAMPLES, generator(device, cfg.seed))
    zs, radius = [z.cpu() for z in zs], radius.cpu()
    layers = opts.layers or default_layers(cfg.K)
    window = opts.window if flow.dim == 2 else None  # else the draws' extent over all panels
    columns = (shown[0], shown[1]) if flow.dim > 2 else (0, 1)
    figures.append(
        (path["layers"], layers_figure(zs, radius, layers, names, title, window, columns))
    )
    h = ckpt.history
    figures.append(
        (path["loss"], loss_figure(h["loss"], h["loss_beta1"], cfg.anneal_steps, log_z, title))
    )
    # layers.png is drawn in a few flat colours: stored indexed, at a fraction of the bytes
    return [save_figure(fig, p, opts.dpi, palette=p == path["layers"]) for p, fig in figures]


def range_1d(samples: Tensor) -> tuple[float, float]:
    """Where 1-D samples are: their 0.05%–99.95% range, padded by a fifth of it on each side."""
    s = samples.detach().cpu().double().reshape(-1)
    lo, hi = torch.quantile(s, 0.0005).item(), torch.quantile(s, 0.9995).item()
    return lo - 0.2 * (hi - lo), hi + 0.2 * (hi - lo)


def mass_range_1d(
    energy: Energy,
    start: tuple[float, float],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    mass: float = 1e-3,
    n: int = 4001,
    tries: int = 8,
) -> tuple[float, float] | None:
    """Where a 1-D target p ∝ exp(−U) has its mass: the ``mass``/2 and 1 − ``mass``/2 quantiles of
    exp(−U) on an n-point grid, which grows from ``start`` (4× its span each try) until its outer
    twentieths hold less than ``mass`` of it. None when it never does within ``tries`` (too wide,
    or not normalisable) or U is nowhere finite."""
    centre, half = (start[0] + start[1]) / 2, max((start[1] - start[0]) / 2, 1e-6)
    for _ in range(tries):
        xs = torch.linspace(centre - half, centre + half, n, dtype=torch.float64)
        with torch.no_grad():
            neg_u = -energy(xs[:, None].to(device=device, dtype=dtype)).double().cpu()
        neg_u = torch.nan_to_num(neg_u, nan=-math.inf, posinf=-math.inf)
        if not torch.isfinite(neg_u).any():
            return None
        w = torch.softmax(neg_u, 0)
        edge = n // 20
        if float(w[:edge].sum() + w[-edge:].sum()) < mass:
            cdf = torch.cumsum(w, 0)
            i0 = int(torch.searchsorted(cdf, torch.tensor(mass / 2, dtype=cdf.dtype)))
            i1 = int(torch.searchsorted(cdf, torch.tensor(1 - mass / 2, dtype=cdf.dtype)))
            return xs[i0].item(), xs[min(i1, n - 1)].item()
        half *= 4
    return None


def _importance_weights(samples: Tensor, log_q: Tensor, energy: Energy) -> Tensor | None:
    """Pareto-smoothed p/q for samples of q (None when the energy is not finite at them)."""
    with torch.no_grad():
        log_w = (-energy(samples) - log_q).double().cpu()
    if not torch.isfinite(log_w).all():
        return None
    smoothed, _ = psis(log_w)
    return torch.exp(smoothed - smoothed.max()).cpu()
