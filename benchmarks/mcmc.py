"""nfcli mcmc's four samplers against known truths: which gives exact draws fastest, and when.

    python benchmarks/mcmc.py                          # every target, seed 0 (~11 min, one core)
    python benchmarks/mcmc.py --only mix4_far,funnel10 --seeds 0,1 --csv runs/mcmc.csv
    python benchmarks/mcmc.py --quick                  # smoke run: short fits and chains (~70 s)

Per target, a flow is fitted at nfcli's defaults (nfcli.run.run_fit, FitConfig() but the seed;
its seconds and its trust report's verdict are recorded), then each method of nfcli.mcmc runs 4
chains on the target with that flow: neutra and independence use it as their sampler, hmc and rwmh
only as their start (each chain at a draw of q, the flow samplers' start). The budget is the same
number of evaluations of U per chain for every method: neutra and hmc run W + N iterations of
STEPS = 10 leapfrog steps (each U and ∂U; N = --draws kept, W = N/2 warm-up), independence and
rwmh 10·(W + N) iterations of one U each (a gradient costs more, and neutra's U passes through the
flow: the seconds and ESS per second show the cost in time).

The truths are nfcli-free: exact for the targets of benchmarks/targets/ (mixtures: mean Σ w_k μ_k
and variance SD² + Σ w_k μ_k² − mean²; ar20: 0 and SDS; funnel10: v ~ N(0, 3²), x_i mean 0, sd
e^{9/4}), quadrature or NumPyro NUTS for the posteriors (benchmarks/posteriors/reference/, whose
own Monte-Carlo error of each mean is taken into account). Per method:

    accept     the acceptance rate, mean over chains
    R-hat      the largest split R-hat over coordinates (nfcli.convergence, arviz-stats)
    ESS        the smallest bulk and tail ESS, and the smallest of the two per second of sampling
    |z|        max_i |mean_i − true_i| / √(MCSE_i² + e_i²): MCSE the chains' own Monte-Carlo error
               of the mean, e_i the truth's (0 where exact); the "within Monte-Carlo error" check
    err        max_i |mean_i − true_i| / true sd_i: the error in units of the posterior's spread
    sd ratio   sd_i / true sd_i for the coordinate farthest from 1 (in log); funnel10: v only
    weights    mixtures: the share of draws whose nearest centre is each component's, against the
               truth's share of each nearest-centre cell (exact sampling of p, 200,000 draws per
               component: the component weight where modes are far apart); |z_w| = |share − m| /
               √(m(1 − m)/ESS), ESS the cell indicator's bulk ESS over the chains
    pass       R-hat < 1.01, every |z| ≤ 4 and every |z_w| ≤ 4

Prints the command line, nfcli's commit, then one Markdown row per target × method as it ends.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import runpy
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from posteriors import POSTERIORS, REFERENCE
from provenance import nfcli_commit

import nfcli
from nfcli import FitConfig, NfcliError, load_energy
from nfcli.convergence import RHAT_OK, convergence
from nfcli.mcmc.chains import METHODS, McmcRun, McmcSettings, run_mcmc
from nfcli.run import run_fit

TARGET_FILES = Path(__file__).parent / "targets"
CHAINS, STEPS = 4, 10
Z_OK = 4.0  # |z| above this: the estimate is off by more than its Monte-Carlo error explains
CELL_DRAWS = 200_000  # exact draws per mixture component for the nearest-centre cells' truth


@dataclass
class Truth:
    """What the draws should give, made without nfcli: each coordinate's mean, sd and the mean's
    own Monte-Carlo error (0 where exact), all (D,); which sds a sample can estimate (None: all);
    for mixtures the centres (K, D) and the mass of each nearest-centre cell (K,)."""

    mean: np.ndarray
    sd: np.ndarray
    mean_error: np.ndarray
    sd_estimable: np.ndarray | None = None
    centres: np.ndarray | None = None
    cell_mass: np.ndarray | None = None


def nearest_centre(draws: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each draw's nearest centre (Euclidean): draws (..., D), centres (K, D) → indices (...)."""
    sq = ((draws[..., None, :] - centres) ** 2).sum(-1)
    return sq.argmin(-1)


def mixture_truth(module: dict) -> Truth:
    """An isotropic Gaussian mixture Σ_k w_k N(μ_k, SD² I): mean Σ w_k μ_k, variance
    SD² + Σ w_k μ_k² − mean² (exact); cell masses m = wᵀ P, P[j, k] the share of CELL_DRAWS exact
    draws of component j whose nearest centre is k (P = I where centres are far apart)."""
    w, mu, s = np.asarray(module["WEIGHTS"]), np.asarray(module["CENTRES"]), module["SD"]
    mean = w @ mu
    sd = np.sqrt(s**2 + w @ mu**2 - mean**2)
    rng = np.random.default_rng(20240615)
    P = np.stack(
        [
            np.bincount(
                nearest_centre(m + s * rng.standard_normal((CELL_DRAWS, len(m))), mu),
                minlength=len(w),
            )
            / CELL_DRAWS
            for m in mu
        ]
    )
    return Truth(mean, sd, np.zeros_like(mean), centres=mu, cell_mass=w @ P)


def ar20_truth(module: dict) -> Truth:
    sd = module["SDS"].numpy()
    return Truth(np.zeros_like(sd), sd, np.zeros_like(sd))


def funnel_truth(module: dict) -> Truth:
    """v ~ N(0, 3²); x_i | v ~ N(0, eᵛ), so E x_i = 0 and Var x_i = E eᵛ = e^{9/2}. Only v's sd
    is scored: E x_i⁴ = 3 E e^{2v} = 3e^{18}, so the variance of even 80,000 exact draws of x_i
    has a standard error of √(3/80,000)·e^{9/2} ≈ 55% of its value."""
    D = module["DIM"]
    sd = np.array([3.0] + [math.exp(9 / 4)] * (D - 1))
    return Truth(np.zeros(D), sd, np.zeros(D), sd_estimable=np.arange(D) == 0)


def posterior_truth(name: str) -> Truth:
    ref = json.loads((REFERENCE / f"{name}.json").read_text())
    mean, sd = np.asarray(ref["mean"]), np.asarray(ref["sd"])
    return Truth(mean, sd, np.asarray(ref["mcse_mean_in_sd"]) * sd)


@dataclass
class Target:
    """A target: its energy file and the truth made from the file's constants (or its name)."""

    path: Path
    truth: Callable[[], Truth]


def _file(name: str, truth: Callable[[dict], Truth]) -> Target:
    path = TARGET_FILES / f"{name}.py"
    return Target(path, lambda: truth(runpy.run_path(str(path))))


def _posterior(name: str) -> Target:
    return Target(POSTERIORS / f"{name}.py", lambda: posterior_truth(name))


TARGETS = {
    "mix8_near": _file("mix8_near", mixture_truth),
    "mix4_far": _file("mix4_far", mixture_truth),
    "mix20": _file("mix20", mixture_truth),
    "mix6_hidden": _file("mix6_hidden", mixture_truth),
    "ar20": _file("ar20", ar20_truth),
    "funnel10": _file("funnel10", funnel_truth),
    "eight_schools_noncentered": _posterior("eight_schools_noncentered"),
    "eight_schools_centered": _posterior("eight_schools_centered"),
    "poisson_glm": _posterior("poisson_glm"),
}


@dataclass
class Row:
    """One target × method. The fit's columns repeat on each of its methods' rows."""

    target: str
    D: int
    seed: int
    fit_s: float
    verdict: str
    method: str
    iterations: int = 0  # per chain, warm-up included
    seconds: float = math.nan
    accept: float = math.nan
    rhat: float = math.nan
    ess_bulk: float = math.nan
    ess_tail: float = math.nan
    ess_per_s: float = math.nan
    z: float = math.nan
    err_sd: float = math.nan
    sd_ratio: float = math.nan
    weights: str = ""
    z_weights: float = math.nan
    passes: bool = False
    note: str = ""

    def markdown(self, first: bool, seeds: bool) -> str:
        """The row; the target's own columns only on its first method's row."""
        name = f"{self.target} s{self.seed}" if seeds else self.target
        head = f"| {name} | {self.D} | {self.fit_s:.0f} | {self.verdict} " if first else "| | | | "
        return head + (
            f"| {self.method} | {self.seconds:.1f} | {self.accept:.2f} | {self.rhat:.3f} "
            f"| {self.ess_bulk:.0f} / {self.ess_tail:.0f} | {self.ess_per_s:.0f} | {_z(self.z)} "
            f"| {self.err_sd:.3f} | {self.sd_ratio:.3f} | {self.weights} | {_z(self.z_weights)} "
            f"| {'yes' if self.passes else '**no**'} | {self.note} |"
        )


HEADER = (
    "| target | D | fit s | verdict | method | s | accept | max R-hat | min ESS bulk / tail "
    "| min ESS/s | max \\|z\\| | max \\|err\\| (sd) | worst sd ratio | cell weights | "
    "max \\|z_w\\| | pass | note |\n" + "|---" * 17 + "|"
)


def _z(z: float) -> str:
    return "" if math.isnan(z) else "∞" if math.isinf(z) else f"{z:.1f}"


def score(run: McmcRun, truth: Truth, row: Row) -> None:
    """Fill ``row``'s sampling columns from the run and the truth (see the module's doc)."""
    v = run.variables
    mean = np.array([x.mean for x in v])
    sd = np.array([x.sd for x in v])
    mcse = np.array([x.mcse_mean for x in v])
    z = np.abs(mean - truth.mean) / np.sqrt(mcse**2 + truth.mean_error**2)
    err = np.abs(mean - truth.mean) / truth.sd
    ratio = sd / truth.sd
    off = np.abs(np.log(ratio))
    if truth.sd_estimable is not None:
        off[~truth.sd_estimable] = -np.inf
    worst_sd = int(np.nanargmax(off))
    row.seconds = run.seconds
    row.accept = float(run.chains.accept.mean())
    row.rhat = max(x.rhat for x in v)
    row.ess_bulk = min(x.ess_bulk for x in v)
    row.ess_tail = min(x.ess_tail for x in v)
    row.ess_per_s = run.min_ess_per_second
    row.z, row.err_sd, row.sd_ratio = float(np.max(z)), float(np.max(err)), float(ratio[worst_sd])
    worst_z = int(np.nanargmax(z))
    row.note = f"worst z at {run.names[worst_z]}, sd at {run.names[worst_sd]}"
    z_ok = bool((z <= Z_OK).all())
    if truth.centres is not None:
        cells = nearest_centre(run.chains.draws.numpy(), truth.centres)  # (C, N)
        K = len(truth.centres)
        hits = torch.from_numpy((cells[..., None] == np.arange(K)).astype(np.float64))
        share = hits.mean((0, 1)).numpy()
        ess = np.array([x.ess_bulk for x in convergence(hits, [str(k) for k in range(K)])])
        m = truth.cell_mass
        with np.errstate(divide="ignore", invalid="ignore"):
            z_w = np.abs(share - m) / np.sqrt(m * (1 - m) / ess)
        z_w = np.where(np.isnan(z_w), math.inf, z_w)  # no ESS to be had: a miss
        row.weights = "/".join(f"{s:.3f}" for s in share)
        row.z_weights = float(z_w.max())
        z_ok = z_ok and bool((z_w <= Z_OK).all())
    row.passes = bool(row.rhat < RHAT_OK and z_ok)


def fit_flow(energy: nfcli.Energy, config: FitConfig) -> tuple[nfcli.Flow, str, float]:
    """A fit at ``config``: the flow, the trust report's verdict and the fit's wall seconds."""
    with tempfile.TemporaryDirectory(prefix="nfcli-mcmc-") as out:
        checkpoint, report = run_fit(energy, config, output=out, force=True)
    return checkpoint.flow, report.verdict or "", float(report.wall_time_s or math.nan)


def settings(method: str, draws: int, seed: int) -> McmcSettings:
    """The equal budget: W + N iterations of STEPS gradient steps, or STEPS·(W + N) of one U."""
    per = 1 if method in ("neutra", "hmc") else STEPS
    return McmcSettings(method, CHAINS, per * draws, per * (draws // 2), STEPS, seed)


def bench_target(
    name: str, seed: int, draws: int, methods: list[str], fit_settings: dict
) -> Iterator[Row]:
    """Fit, then run each method: its row as it ends (none where the fit fails)."""
    target = TARGETS[name]
    truth = target.truth()
    energy = load_energy(str(target.path))
    try:  # the fit's own draws are q's (--sampler q): this benchmark runs the samplers itself
        config = FitConfig(seed=seed, **{"sampler": "q", **fit_settings})
        flow, verdict, fit_s = fit_flow(energy, config)
    except NfcliError as e:
        print(f"| {name} | {energy.dim} | fit failed: {' '.join(str(e).split())[:200]} |")
        return
    for method in methods:
        s = settings(method, draws, seed)
        row = Row(name, energy.dim, seed, fit_s, verdict, method, s.draws + s.warmup)
        with warnings.catch_warnings():  # arviz-stats on chains that have not mixed
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                score(run_mcmc(energy, s, flow=flow, target=name), truth, row)
            except NfcliError as e:  # neutra on a fit that kept several modes: refused
                row.note = f"refused: {' '.join(str(e).split())[:90]}"
        yield row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--only", default="", help=f"comma-separated targets (default: {','.join(TARGETS)})"
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    ap.add_argument("--seeds", default="0", help="comma-separated fit and chain seeds")
    ap.add_argument(
        "--draws",
        type=int,
        default=2000,
        help="kept draws per chain of neutra and hmc (warm-up half as many); "
        f"independence and rwmh get {STEPS}× both",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: fits of 300 steps, --draws 100"
    )
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    methods = args.methods.split(",")
    if unknown or set(methods) - set(METHODS):
        ap.error(f"targets are {', '.join(TARGETS)}; methods {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    draws = 100 if args.quick else args.draws
    fit_settings = {"iters": 300} if args.quick else {}
    torch.set_num_threads(args.threads)

    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"nfcli {nfcli.__version__}, commit {nfcli_commit()}; torch {torch.__version__}")
    print(
        f"threads: {args.threads}; fits: FitConfig {fit_settings or 'defaults'}; {CHAINS} chains; "
        f"per chain neutra/hmc {draws // 2} + {draws} iterations of {STEPS} leapfrog steps, "
        f"independence/rwmh {STEPS * (draws // 2)} + {STEPS * draws}\n"
    )
    print(HEADER, flush=True)
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name in names:
        for seed in seeds:
            for i, row in enumerate(bench_target(name, seed, draws, methods, fit_settings)):
                rows.append(row)
                print(row.markdown(i == 0, len(seeds) > 1), flush=True)
    passed = sum(r.passes for r in rows)
    print(f"\n{passed} of {len(rows)} pass; {time.perf_counter() - t0:.0f} s in all.")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(Row)])
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)


if __name__ == "__main__":
    main()
