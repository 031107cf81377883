"""The paper's Figure 3 as one call: fit every (target, flow type, K), then draw and tabulate them.

``run_compare`` fits each combination with ``run_fit`` (so each keeps its own folder with model.pt,
samples, metrics and figures), then writes ``compare.<format>`` (one row per target: the target,
one panel per flow type and K, and the bound against K) and ``summary.csv`` (one line per fit).
Folders are ``OUTPUT/<target>/<flow>-K<K>``; every folder is checked before the first fit so
that nothing is overwritten without ``force`` and a refusal comes before hours of fitting.

With ``mcmc`` (a plain sampler of ``nfcli.mcmc``: rwmh or hmc) each target is also sampled by
MCMC without any flow, as a reference drawn next to the target (the seed work's figure: target |
MH samples | flow K = 4 | flow K = 16); its draws and summary go to
``OUTPUT/<target>/mcmc-<method>.npy`` and ``.json``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nfcli.checkpoint import Checkpoint, load_checkpoint
from nfcli.config import FitConfig
from nfcli.diagnostics import choose_window, log_prob
from nfcli.energy import Energy
from nfcli.errors import NfcliError
from nfcli.figures import N_SAMPLES, FigureOptions, preset_window, range_1d
from nfcli.flows import COUPLING_TYPES, FLOW_TYPES
from nfcli.io import atomic_write, ensure_dir
from nfcli.mcmc import FLOW_METHODS, METHODS, McmcRun, McmcSettings, run_mcmc, write_mcmc
from nfcli.plots import (
    ComparePanel,
    CompareRow,
    McmcPanel,
    compare_figure,
    density_grid,
    mass_window,
    normalised_curve,
    save_figure,
)
from nfcli.report import TrustReport
from nfcli.run import run_fit
from nfcli.train import Progress

GRID = 200
MCMC_DRAWS = {"rwmh": 5000, "hmc": 1000}  # per chain (4 chains): ~20,000 or 4,000 draws to draw
MCMC_BINS = {1: 60, 2: 60}
SUMMARY_FIELDS = [
    "target", "vars", "flow", "K", "seed", "iters", "restarts", "final_loss_beta1", "elbo",
    "elbo_se", "log_z_is", "log_z_is_se", "ess_fraction", "khat", "log_z_quadrature",
    "log_z_reference", "kl_qp", "kl_pq", "tv", "verdict", "wall_time_s", "model", "reused",
]  # fmt: skip


@dataclass
class Planned:
    """One fit of a compare run: where it goes, and whether an existing one is reused."""

    target: int  # index into the energies
    energy: Energy
    config: FitConfig
    folder: Path
    reuse: bool


def split_targets(text: str) -> list[str]:
    """'u1,u2' → ['u1', 'u2'], splitting only at commas outside brackets, so that expressions
    with function arguments such as 'Max(x, y)' stay whole."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    parts = [p.strip() for p in parts]
    if not all(parts):
        raise NfcliError(
            f"The target list {text!r} has an empty entry. Separate targets by single commas, "
            "e.g. nfcli compare u1,u2 --K 2,8."
        )
    return parts


def folder_name(energy: Energy, index: int) -> str:
    """A built-in's name, a file's stem, or exprN for the N-th target (1-based)."""
    s = energy.source
    name = s["name"] or (Path(s["path"]).stem if s["path"] else f"expr{index + 1}")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def plan(
    energies: Sequence[Energy],
    Ks: Sequence[int],
    flows: Sequence[str],
    config: FitConfig,
    output: Path,
    force: bool = False,
    reuse: bool = False,
    hidden: list[int] | None = None,
    bins: int | None = None,
) -> list[Planned]:
    """Every (target, flow, K) in figure order, each config validated and each folder checked.
    ``hidden`` and ``bins`` apply to the flow types that have them (couplings, splines)."""
    if not Ks or len(set(Ks)) != len(Ks):
        raise NfcliError(f"--K {Ks}: give one or more different layer counts, e.g. --K 2,8,32.")
    bad = [f for f in flows if f not in FLOW_TYPES]
    if bad or not flows or len(set(flows)) != len(flows):
        raise NfcliError(
            f"--flow {','.join(flows)}: give one or more different flow types from "
            f"{', '.join(FLOW_TYPES)}, e.g. --flow planar,radial."
        )
    for option, value, kinds in (
        ("--hidden", hidden, COUPLING_TYPES),
        ("--bins", bins, ("spline",)),
    ):
        if value is not None and not set(flows) & set(kinds):
            raise NfcliError(
                f"{option} applies to --flow {', '.join(kinds)}, none of which is in --flow "
                f"{','.join(flows)}. Drop {option}, or add such a flow."
            )
    names, planned, refused = set(), [], []
    for i, energy in enumerate(energies):
        name = folder_name(energy, i)
        name = name if name not in names else f"{name}-{i + 1}"
        names.add(name)
        for kind in flows:
            for K in Ks:
                cfg = replace(
                    config,
                    K=K,
                    flow=kind,
                    hidden=hidden if kind in COUPLING_TYPES else None,
                    bins=bins if kind == "spline" else None,
                ).resolve(energy.dim)
                cfg.validate(energy.dim)
                folder = output / name / f"{kind}-K{K}"
                model = folder / "model.pt"
                use = False
                if model.exists():
                    use = reuse and _matches(load_checkpoint(model), energy, cfg)
                    if not use and not force:
                        refused.append(str(model))
                planned.append(Planned(i, energy, cfg, folder, use))
    if refused:
        shown = ", ".join(refused[:3]) + (
            f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        )
        raise NfcliError(
            f"{shown} already exist{'s' if len(refused) == 1 else ''} and would be overwritten; "
            "nothing was fitted. Pass --reuse to draw from fits whose target and options match, "
            "--force to refit them, or choose another folder with -o/--output."
        )
    return planned


def _matches(ckpt: Checkpoint, energy: Energy, config: FitConfig) -> bool:
    source = ckpt.energy_source
    return (
        ckpt.config.to_dict() == config.to_dict()
        and source.get("text") == energy.source["text"]
        and tuple(source.get("vars", ())) == energy.names
    )


def run_compare(
    energies: Sequence[Energy],
    Ks: Sequence[int],
    flows: Sequence[str],
    config: FitConfig,
    output: str | Path,
    force: bool = False,
    reuse: bool = False,
    options: FigureOptions | None = None,
    progress: Callable[[str, int], Progress | None] | None = None,
    on_done: Callable[[Planned, TrustReport], None] | None = None,
    device: str | torch.device = "cpu",
    hidden: list[int] | None = None,
    bins: int | None = None,
    mcmc: str | None = None,
    on_mcmc: Callable[[Energy, McmcRun, Path], None] | None = None,
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Fit (or reuse) every combination, then write compare.<format> and summary.csv.

    ``progress(label, steps)`` may return a per-step callback for the fit called ``label``;
    ``on_done`` is called with each finished fit's trust report; with ``mcmc``, ``on_mcmc`` with
    each target's chains and where they were written. Returns the figure's path, the table's
    path and its rows."""
    opts = options or FigureOptions()
    opts.validate()
    plain = [m for m in METHODS if m not in FLOW_METHODS]
    if mcmc is not None and mcmc not in plain:
        raise NfcliError(
            f"--mcmc {mcmc}: compare samples each target without a flow, with one of "
            f"{', '.join(plain)} (the seed work's reference is rwmh), e.g. --mcmc rwmh."
        )
    out = ensure_dir(Path(output))
    planned = plan(energies, Ks, flows, config, out, force, reuse, hidden, bins)
    chains_at = {job.target: job.folder.parent / f"mcmc-{mcmc}.npy" for job in planned}
    if mcmc is not None and not (force or reuse):
        there = [str(p) for p in chains_at.values() if p.exists()]
        if there:
            raise NfcliError(
                f"{', '.join(there)} already exist(s) and would be overwritten; nothing was "
                "fitted. Pass --reuse or --force to sample again, or choose another folder."
            )
    fits: list[tuple[Planned, Checkpoint]] = []
    for i, job in enumerate(planned):
        if job.reuse:
            ckpt = load_checkpoint(job.folder / "model.pt")
        else:
            label = (
                f"{job.energy.label} {job.config.flow} K={job.config.K} ({i + 1}/{len(planned)})"
            )
            step = progress(label, job.config.iters) if progress else None
            ckpt, _ = run_fit(job.energy, job.config, job.folder, True, step, device)
        fits.append((job, ckpt))
        if on_done:
            on_done(job, ckpt.report)
    references: dict[int, McmcRun] = {}
    if mcmc is not None:
        for i, energy in enumerate(energies):
            settings = McmcSettings(mcmc, draws=MCMC_DRAWS[mcmc], seed=config.seed)
            references[i] = run_mcmc(energy, settings, target=energy.label)
            summary_path = write_mcmc(references[i], str(chains_at[i]))
            if on_mcmc:
                on_mcmc(energy, references[i], summary_path)
    rows = [_summary_row(job, ckpt) for job, ckpt in fits]
    summary = out / "summary.csv"
    _write_csv(summary, rows)
    figure_rows = [
        _figure_row(energy, [(j, c) for j, c in fits if j.target == i], opts, references.get(i))
        for i, energy in enumerate(energies)
    ]
    title = f"{', '.join(sorted(set(flows)))} flows, K = {', '.join(map(str, Ks))}"
    figure = save_figure(
        compare_figure(figure_rows, title), out / f"compare.{opts.format}", opts.dpi
    )
    return figure, summary, rows


def _summary_row(job: Planned, ckpt: Checkpoint) -> dict[str, Any]:
    m = ckpt.report.to_dict()  # the columns are metrics.json's keys, "" where a fit has none
    row = {k: m.get(k, "") for k in SUMMARY_FIELDS}
    row.update(
        target=job.energy.label,
        vars=" ".join(job.energy.names),
        flow=job.config.flow,
        K=job.config.K,
        seed=job.config.seed,
        iters=job.config.iters,
        restarts=job.config.restarts,
        model=str(job.folder / "model.pt"),
        reused=job.reuse,
    )
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _figure_row(
    energy: Energy,
    fits: list[tuple[Planned, Checkpoint]],
    opts: FigureOptions,
    reference: McmcRun | None = None,
) -> CompareRow:
    """A target's row: its density, its MCMC draws' histogram (with ``reference``) and each fit's
    exact density on one window (D ≤ 2)."""
    dim = energy.dim
    log_z = energy.log_z
    samples = torch.cat(
        [c.flow.sample(N_SAMPLES // len(fits), torch.Generator().manual_seed(0)) for _, c in fits]
    )
    row = CompareRow(energy.label, energy.names, ((0.0, 1.0), (0.0, 1.0)), None, log_z)
    if dim == 2:
        grid = choose_window(samples, energy)
        row.log_z = grid.log_z
        row.window = opts.window or preset_window(energy.source) or mass_window(grid)
        row.p = density_grid(lambda x: -energy(x) - grid.log_z, row.window, GRID, torch.float32)
    elif dim == 1:
        row.window = opts.window or (range_1d(samples),) * 2
        row.xs = torch.linspace(*row.window[0], 500, dtype=torch.float64)
        if row.log_z is None:  # as the trust report's: None where mass is left at the edges
            grid = choose_window(samples, energy)
            ok = math.isfinite(grid.log_z) and grid.edge_mass <= 1e-6
            row.log_z = grid.log_z if ok else None
        with torch.no_grad():
            row.p = normalised_curve(-energy(row.xs[:, None].float()), row.xs, row.log_z)
    for job, ckpt in fits:
        r = ckpt.report
        kl = r.kl_qp
        if dim == 1 and row.log_z is not None:
            kl = row.log_z - r.elbo
        if dim == 2:
            q = density_grid(ckpt.flow.log_prob, row.window, GRID, torch.float32)
        elif dim == 1:
            q = log_prob(ckpt.flow, row.xs[:, None]).exp()
        else:
            q = None
        row.panels.append(ComparePanel(job.config.flow, job.config.K, q, -r.elbo, r.elbo_se, kl))
    if reference is not None:
        row.mcmc = mcmc_panel(reference, row)
    return row


def mcmc_panel(run: McmcRun, row: CompareRow) -> McmcPanel:
    """The chains' draws as a histogram density over the row's window (D ≤ 2; D > 2: an empty
    panel with the label), titled by the sampler and its worst R-hat."""
    rhat = max(v.rhat for v in run.variables)
    label = f"{run.settings.method} ({run.chains.draws.shape[0]} chains)\nR-hat {rhat:.3f}"
    z = run.chains.draws.reshape(-1, run.chains.draws.shape[-1]).float()
    dim = z.shape[1]
    if dim > 2:
        return McmcPanel(label, None)
    bins = MCMC_BINS[dim]
    lo = [w[0] for w in row.window[:dim]]
    hi = [w[1] for w in row.window[:dim]]
    ranges = [v for pair in zip(lo, hi, strict=True) for v in pair]
    hist = torch.histogramdd(z, bins=[bins] * dim, range=ranges)
    cell = math.prod((b - a) / bins for a, b in zip(lo, hi, strict=True))
    density = hist.hist / (len(z) * cell)
    if dim == 1:
        return McmcPanel(label, density, hist.bin_edges[0])
    return McmcPanel(label, density.T)  # rows: y, as the target's image
