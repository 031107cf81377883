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

With ``jobs`` = N > 1 the fits run in N worker processes (``fit_in_workers``), each one
``run_fit`` call writing its own folder as one at a time would, and each worker using its share of
the threads a single fit would use (``worker_threads``). The figure and summary.csv are then made
from the checkpoints the workers wrote, in the same order. A fit depends only on its seed (``fit``
seeds itself and leaves the global random state alone), so the results are those of ``jobs`` = 1
bit for bit when the thread counts match; only wall times differ.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import multiprocessing
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nfcli.checkpoint import Checkpoint, load_checkpoint
from nfcli.config import FitConfig
from nfcli.diagnostics import choose_window, log_prob
from nfcli.energy import Energy, energy_from_source
from nfcli.errors import NfcliError
from nfcli.figures import N_SAMPLES, FigureOptions, preset_window, range_1d
from nfcli.flows import COUPLING_TYPES, FLOW_TYPES
from nfcli.io import atomic_write, ensure_dir
from nfcli.mcmc.chains import FLOW_METHODS, METHODS, McmcRun, McmcSettings, run_mcmc, write_mcmc
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
from nfcli.threads import allowed_cpus
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
        ckpt.config.fitted() == config.fitted()
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
    jobs: int = 1,
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Fit (or reuse) every combination, then write compare.<format> and summary.csv.

    ``progress(label, steps)`` may return a per-step callback for the fit called ``label``;
    ``on_done`` is called with each finished fit's trust report; with ``mcmc``, ``on_mcmc`` with
    each target's chains and where they were written. Returns the figure's path, the table's
    path and its rows.

    ``jobs`` > 1 runs that many fits at once in worker processes (``fit_in_workers``): there is
    no per-step ``progress`` then, and ``on_done`` is called as each fit ends, in the order they
    end. The workers rebuild each energy from ``energy.source`` (as a checkpoint's is), so the
    energies must be ``load_energy``'s; the MCMC references still run here, one after another."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise NfcliError(
            f"--jobs {jobs!r} is not a number of fits to run at once: give a positive integer, "
            "e.g. --jobs 2 to fit two at a time in separate processes, or leave it out (1: one "
            "fit after another, with a progress bar each)."
        )
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
    if jobs > 1:
        fits = _fit_all_in_workers(planned, jobs, device, on_done)
    else:
        fits = _fit_all_here(planned, device, progress, on_done)
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


def _fit_all_here(
    planned: list[Planned],
    device: str | torch.device,
    progress: Callable[[str, int], Progress | None] | None,
    on_done: Callable[[Planned, TrustReport], None] | None,
) -> list[tuple[Planned, Checkpoint]]:
    """Each planned fit with its checkpoint, in plan order, fitted (or loaded) one at a time."""
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
    return fits


def _fit_all_in_workers(
    planned: list[Planned],
    jobs: int,
    device: str | torch.device,
    on_done: Callable[[Planned, TrustReport], None] | None,
) -> list[tuple[Planned, Checkpoint]]:
    """Each planned fit with its checkpoint, in plan order: the reused ones loaded here, the
    others fitted in up to ``jobs`` workers and loaded from the model.pt each one wrote."""
    ckpts: dict[int, Checkpoint] = {}

    def finished(i: int) -> None:
        ckpts[i] = load_checkpoint(planned[i].folder / "model.pt")
        if on_done:
            on_done(planned[i], ckpts[i].report)

    todo = [i for i, job in enumerate(planned) if not job.reuse]
    for i in (i for i, job in enumerate(planned) if job.reuse):
        finished(i)
    if todo:
        fit_in_workers([planned[i] for i in todo], jobs, device, lambda k: finished(todo[k]))
    return [(job, ckpts[i]) for i, job in enumerate(planned)]


class CancelledError(Exception):
    """Raised inside a worker's fit once the parent has asked the workers to stop."""


_cancel: Any = None  # in a worker process: the parent's cancel Event, set by _start_worker


def worker_threads(workers: int, threads: int | None = None) -> int:
    """The CPU threads of each of ``workers`` worker processes: what one fit here would use
    (``threads``; default torch.get_num_threads(), as ``nfcli.threads`` set it), but at most an
    equal share of this process's CPUs (``allowed_cpus``), and at least 1."""
    threads = torch.get_num_threads() if threads is None else threads
    return max(1, min(threads, len(allowed_cpus()) // workers))


@dataclass(frozen=True)
class WorkerFit:
    """One fit as a worker gets it (picklable): the energy as its source, rebuilt there."""

    source: dict[str, Any]
    config: FitConfig
    folder: Path
    device: str


def _start_worker(cancel: Any, threads: int) -> None:
    """A worker's setup: Ctrl-C is the parent's to handle (it sets ``cancel``); its threads."""
    global _cancel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _cancel = cancel


def _stop_if_cancelled() -> bool:
    """``fit``'s stop callback in a worker: raises CancelledError once the parent asked, so that
    the fit ends at this step and ``run_fit`` writes nothing (rather than a fit cut short)."""
    if _cancel is not None and _cancel.is_set():
        raise CancelledError
    return False


def _fit_in_worker(job: WorkerFit) -> None:
    _stop_if_cancelled()  # cancelled while queued
    energy = energy_from_source(job.source, trust=True)  # a file's code: the parent ran it already
    run_fit(energy, job.config, job.folder, True, None, job.device, stop=_stop_if_cancelled)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Block SIGINT while worker processes start (a Ctrl-C meanwhile is delivered on leaving): a
    process inherits its parent's signal mask, so the workers start with Ctrl-C blocked and a
    Ctrl-C in the terminal reaches this process alone, never a worker half-way through starting."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def fit_in_workers(
    jobs: Sequence[Planned],
    workers: int,
    device: str | torch.device = "cpu",
    on_finished: Callable[[int], None] | None = None,
) -> None:
    """``run_fit`` of each job into its folder, in up to ``workers`` spawned processes of
    ``worker_threads`` threads each; ``on_finished(k)`` here as ``jobs[k]`` ends (in the order
    they end). Any exception (a worker's NfcliError, KeyboardInterrupt here) cancels the fits not
    yet started and ends the running ones at their next step without writing anything (a fit
    already evaluating finishes), waits for the workers to end, and is raised here; a worker that
    died (killed) is an NfcliError. As with any spawned process, a script calling this must guard
    its own work with ``if __name__ == "__main__":`` (the workers import the script's module)."""
    ctx = multiprocessing.get_context("spawn")  # not fork: torch's threads may be running here
    cancel = ctx.Event()
    count = min(workers, len(jobs))
    futures: dict[Future[None], int] = {}
    threads = worker_threads(count)
    with ProcessPoolExecutor(count, ctx, _start_worker, (cancel, threads)) as pool:
        try:
            with _sigint_held():
                for k, job in enumerate(jobs):
                    config = replace(job.config, threads=threads)
                    task = WorkerFit(dict(job.energy.source), config, job.folder, str(device))
                    futures[pool.submit(_fit_in_worker, task)] = k
            for future in as_completed(futures):
                try:
                    future.result()  # a worker's exception is raised here
                except BrokenProcessPool:
                    raise NfcliError(
                        f"A worker process of --jobs {workers} ended abruptly (it was killed, "
                        "perhaps for want of memory: each worker holds its own copy of torch), "
                        "so the fits still to finish were stopped; those that had finished are "
                        "in their folders. Run again with fewer --jobs, adding --reuse to keep "
                        "the finished fits."
                    ) from None
                if on_finished:
                    on_finished(futures[future])
        except BaseException:
            cancel.set()
            for future in futures:
                future.cancel()
            raise


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
