"""The sampling literature's standard targets (Blessing et al., ICML 2024, "Beyond ELBOs"), fitted
by nfcli at its defaults and scored against truths made without nfcli.

    python benchmarks/suite.py                              # every target, seed 0
    python benchmarks/suite.py gmm40 funnel10 --set restarts=4 --csv runs/suite.csv

Targets (benchmarks/suite/*.py; funnel10 is benchmarks/targets/funnel10.py):

    funnel10           Neal's funnel, 10-D: x0 ~ N(0, 3²); ln Z exact
    gmm40              40 unit Gaussians, means uniform in [−40, 40]² (seed recorded); ln Z = 0
    many_well32        16 independent double wells; each well's d > 0 side holds 0.844; ln Z exact
    student_mixture10  10 Student-t (ν = 2) components in 10-D; ln Z = 0
    three_gaussians4   three equal Gaussians 8 sds apart in 4-D; ln Z = 0
    german_credit      25-D logistic regression; the benchmark's 10,000 ground-truth draws
    breast_cancer      31-D logistic regression; the benchmark's 10,080 ground-truth draws
    lgcp               1,600-D log-Gaussian Cox process on the pines; no truth (a scale test)

Each is fitted with nfcli.run.run_fit at FitConfig's defaults (changed only by --set), and the
draws the fit writes (samples.npy: what a user gets) are scored:

    ln Z err   nfcli's importance-sampling ln Z − the exact one (where exact)
    modes      mixtures: the share of draws nearest each centre against p's exact share of that
               cell; "held" counts the modes with at least a quarter of p's share (gmm40: 1/160
               of the draws), "worst" is the largest |share − p's share|
    wells      many_well32: the share of draws with d_k > 0, worst |share − 0.844| over the wells
    x0 sd      funnel10: q's sd of x0 / 3, and its 5% quantile (p's: −4.93)
    moments    the logistic regressions: worst |mean error| in reference sds, sd ratio farthest
               from 1
    ESS, k̂     the trust report's (Kish ESS as a fraction; Pareto k̂), and its verdict
    s          the whole run_fit (start search, fit, trust report, figures)

and each row says whether the goal of issue 27 is met (gmm40: all 40 modes held and |ln Z err| ≤
0.05; many_well32: every share within 0.03 of 0.844 and |ln Z err| ≤ 0.1; funnel10: x0's sd
within 5% and |ln Z err| ≤ 0.02; three_gaussians4: every share within 0.05 of 1/3; the
regressions: every mean within 0.1 sd and every sd within 10%; lgcp: the fit finishes).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import runpy
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from posteriors import fit_once, parse_settings
from provenance import nfcli_commit

import nfcli
from nfcli import FitConfig, NfcliError, load_energy

HERE = Path(__file__).parent
SUITE = HERE / "suite"
FILES = {
    "funnel10": HERE / "targets" / "funnel10.py",
    "gmm40": SUITE / "gmm40.py",
    "many_well32": SUITE / "many_well32.py",
    "student_mixture10": SUITE / "student_mixture10.py",
    "three_gaussians4": SUITE / "three_gaussians4.py",
    "german_credit": SUITE / "german_credit.py",
    "breast_cancer": SUITE / "breast_cancer.py",
    "lgcp": SUITE / "lgcp.py",
}
FUNNEL_SD, FUNNEL_Q05 = 3.0, 3.0 * -1.6448536269514722


@dataclass
class Row:
    target: str
    D: int
    log_z_err: float = math.nan
    elbo_err: float = math.nan
    score: str = ""  # the target's own numbers, in words
    goal: str = ""  # "yes", "NO" or "" (no goal)
    ess: float = math.nan
    khat: float = math.nan
    verdict: str = ""
    steps: int | None = None
    fit_s: float = math.nan
    total_s: float = math.nan
    log_z: float = math.nan
    note: str = ""

    def markdown(self) -> str:
        return (
            f"| {self.target} | {self.D} | {self.log_z_err:+.3f} | {self.score} | {self.goal} "
            f"| {self.ess:.3f} | {self.khat:.2f} | {self.verdict} | {self.steps or ''} "
            f"| {self.fit_s:.0f} | {self.total_s:.0f} | {self.note} |"
        )


def cell_shares(draws: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The share of draws (n, D) whose nearest centre (K, D) is each one."""
    nearest = np.empty(len(draws), dtype=int)
    for i in range(0, len(draws), 20_000):  # bounded memory for (n, K, D)
        d = ((draws[i : i + 20_000, None, :] - centres) ** 2).sum(-1)
        nearest[i : i + 20_000] = d.argmin(1)
    return np.bincount(nearest, minlength=len(centres)) / len(draws)


def score_draws(name: str, ns: dict, draws: np.ndarray, row: Row) -> None:
    """Fill row.score and row.goal from the fit's draws (n, D) and the target's truth."""
    err = row.log_z_err
    if "CENTRES" in ns:
        centres = np.asarray(ns["CENTRES"], dtype=float)
        if "exact_draws" in ns:  # overlapping cells: p's own shares of them, by sampling p
            truth = cell_shares(ns["exact_draws"](400_000), centres)
        else:
            truth = np.asarray(ns.get("SHARES", [1 / len(centres)] * len(centres)))
        shares = cell_shares(draws, centres)
        held = int((shares >= truth / 4).sum())
        worst = float(np.abs(shares - truth).max())
        row.score = f"{held}/{len(centres)} modes held; worst share error {worst:.3f}"
        if name == "gmm40":
            row.goal = _yes(held == len(centres) and abs(err) <= 0.05)
        elif name == "three_gaussians4":
            row.goal = _yes(worst <= 0.05)
    elif "RIGHT_SHARE" in ns:
        right = (draws[:, 0::2] > 0).mean(0)
        worst = float(np.abs(right - ns["RIGHT_SHARE"]).max())
        row.score = (
            f"d>0 share {right.min():.3f}–{right.max():.3f} (p: {ns['RIGHT_SHARE']:.3f}); "
            f"worst error {worst:.3f}"
        )
        row.goal = _yes(worst <= 0.03 and abs(err) <= 0.1)
    elif name == "funnel10":
        ratio = float(draws[:, 0].std(ddof=1) / FUNNEL_SD)
        q05 = float(np.quantile(draws[:, 0], 0.05))
        row.score = f"x0 sd ratio {ratio:.3f}; x0 5% quantile {q05:.2f} (p: {FUNNEL_Q05:.2f})"
        row.goal = _yes(abs(ratio - 1) <= 0.05 and abs(err) <= 0.02)
    elif (SUITE / "reference" / f"{name}.json").is_file():
        ref = json.loads((SUITE / "reference" / f"{name}.json").read_text())
        mean, sd = np.asarray(ref["mean"]), np.asarray(ref["sd"])
        mean_err = np.abs(draws.mean(0) - mean) / sd
        ratio = draws.std(0, ddof=1) / sd
        worst_sd = ratio[np.argmax(np.abs(np.log(ratio)))]
        row.score = f"mean err {mean_err.max():.3f} sd; sd ratio {worst_sd:.3f}"
        row.goal = _yes(mean_err.max() <= 0.1 and (np.abs(ratio - 1) <= 0.1).all())
    elif name == "lgcp":
        row.score = f"ln Z {row.log_z:.2f}"
        row.goal = "yes"  # it finished


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def run(name: str, settings: dict, seed: int) -> Row:
    path = FILES[name]
    ns = runpy.run_path(str(path))
    energy = load_energy(str(path))
    row = Row(target=name, D=energy.dim)
    config = FitConfig(**{"seed": seed, **settings})
    try:
        _, report, draws, row.total_s = fit_once(energy, config, name)
    except NfcliError as e:
        row.note = f"fit failed: {' '.join(str(e).split())[:200]}"
        row.goal = "NO"
        return row
    row.log_z = report.log_z_is
    if "LOG_Z" in ns:
        row.log_z_err = report.log_z_is - ns["LOG_Z"]
        row.elbo_err = report.elbo - ns["LOG_Z"]
    row.ess, row.khat, row.verdict = report.ess_fraction, report.khat, report.verdict or ""
    row.steps, row.fit_s = report.steps_done, float(report.wall_time_s or math.nan)
    if report.stopped:
        row.note = f"stopped: {report.stopped}"
    score_draws(name, ns, draws, row)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"targets (default: all of {', '.join(FILES)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    args = ap.parse_args()
    names = args.names or list(FILES)
    unknown = [n for n in names if n not in FILES]
    if unknown:
        ap.error(f"unknown targets {unknown}; have {', '.join(FILES)}")
    settings = parse_settings(args.set)
    torch.set_num_threads(args.threads)
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"nfcli {nfcli.__version__}, commit {nfcli_commit()}; torch {torch.__version__}")
    print(f"threads: {args.threads}; FitConfig set: {settings or 'nothing (defaults)'}\n")
    print("| target | D | ln Z err | score | goal | ESS | k̂ | verdict | steps | fit s | s | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:
        row = run(name, settings, args.seed)
        rows.append(row)
        print(row.markdown(), flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)


if __name__ == "__main__":
    main()
