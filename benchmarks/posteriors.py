"""Score nfcli's fits on real Bayesian posteriors against reference moments made without nfcli.

    python benchmarks/posteriors.py                                 # every posterior, defaults
    python benchmarks/posteriors.py garch mixture --set iters=3000 --set flow=realnvp
    python benchmarks/posteriors.py --set hidden=32,32 --csv runs/posteriors.csv --threads 1

The posteriors are the energy files in benchmarks/posteriors/ (4–100 D: eight schools in both
parametrisations, GLMs on badly scaled predictors, GARCH, a mixture, a latent GP, a hierarchical
model); their reference means and sds are in benchmarks/posteriors/reference/, made by
benchmarks/posterior_reference.py from exact formulas, quadrature or NumPyro NUTS (MCSE of each
mean ≤ 0.02 sd). Each is fitted with nfcli.run.run_fit at FitConfig's defaults, changed only by
--set (only the fields given are passed, so new FitConfig fields keep their defaults); then
the draws the fit writes (samples.npy: q's own, or MCMC's with the flow where the verdict asks
for it, FitConfig.sampler) are compared with the reference, coordinate by coordinate (and, for
comparison, 100,000 of q's own draws, "q alone"):

    mean err = max_i |E_q z_i − E_p z_i| / sd_p(z_i)
    sd ratio = sd_q(z_i) / sd_p(z_i) for the coordinate whose ratio is farthest from 1 (in log)
    pass     = every mean err ≤ 0.1 and every sd ratio in [0.9, 1.1]

Prints the command line, nfcli's git commit, then one Markdown row per posterior as its fit ends.
A fit that fails (an NfcliError) gets a row saying so, and the others go on.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import nfcli_commit

import nfcli
from nfcli import FitConfig, NfcliError, load_energy
from nfcli.run import run_fit

HERE = Path(__file__).parent
POSTERIORS = HERE / "posteriors"
REFERENCE = POSTERIORS / "reference"
DRAWS = 100_000
MEAN_TOL, SD_RATIO_LOW, SD_RATIO_HIGH = 0.1, 0.9, 1.1
COLUMNS = [
    "posterior",
    "D",
    "mean_err_sd",
    "worst_sd_ratio",
    "passes",
    "verdict",
    "sampler",
    "q_score",
    "steps",
    "fit_s",
    "total_s",
    "flow",
    "worst_mean_coord",
    "worst_sd_coord",
    "note",
]


@dataclass
class Row:
    """One posterior's score. mean_err_sd: the worst |mean error| in reference sds;
    worst_sd_ratio: q's sd / p's sd for the coordinate farthest from 1."""

    posterior: str
    D: int
    mean_err_sd: float = math.nan
    worst_sd_ratio: float = math.nan
    passes: bool = False
    verdict: str = ""
    steps: int | None = None
    fit_s: float = math.nan
    flow: str = ""
    worst_mean_coord: str = ""
    worst_sd_coord: str = ""
    note: str = ""
    sampler: str = ""  # where samples.npy's draws came from (the report's sampler)
    q_score: str = ""  # q's own draws: mean err / sd ratio
    total_s: float = math.nan  # the whole run_fit: start, fit, report, chains, figures

    def markdown(self) -> str:
        return (
            f"| {self.posterior} | {self.D} | {self.mean_err_sd:.3f} | {self.worst_sd_ratio:.3f} "
            f"| {'yes' if self.passes else 'no'} | {self.verdict} | {self.sampler} "
            f"| {self.q_score} | {self.steps or ''} | {self.fit_s:.1f} | {self.total_s:.1f} "
            f"| {self.flow} | {self.worst_mean_coord} | {self.worst_sd_coord} | {self.note} |"
        )


def available() -> list[str]:
    """The posteriors: energy files in benchmarks/posteriors/ (not _jax.py) with a reference."""
    return [
        p.stem
        for p in sorted(POSTERIORS.glob("*.py"))
        if not p.name.startswith("_") and (REFERENCE / f"{p.stem}.json").is_file()
    ]


def parse_value(text: str) -> Any:
    """'3000' → 3000, '5e-3' → 0.005, 'none' → None, 'true' → True, '64,64' → [64, 64]; else
    the text itself."""
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part]
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """--set key=value pairs as FitConfig keyword arguments; unknown keys are refused."""
    known = {f.name: str(f.type) for f in fields(FitConfig)}
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise SystemExit(
                f"--set {pair!r}: expected key=value with key one of FitConfig's fields: "
                f"{', '.join(known)}"
            )
        value = parse_value(text.strip())
        if "list" in known[key] and value is not None and not isinstance(value, list):
            value = [value]  # --set hidden=64
        settings[key] = value
    return settings


def score(name: str, settings: dict[str, Any], seed: int) -> Row:
    ref = json.loads((REFERENCE / f"{name}.json").read_text())
    energy = load_energy(str(POSTERIORS / f"{name}.py"))
    row = Row(posterior=name, D=energy.dim)
    if list(energy.names) != ref["names"]:
        raise SystemExit(f"{name}: the file's NAMES differ from its reference's; regenerate it")
    config = FitConfig(**{"seed": seed, **settings})
    try:
        checkpoint, report, written, row.total_s = fit_once(energy, config, name)
    except NfcliError as e:
        row.note = f"fit failed: {' '.join(str(e).split())[:200]}"
        return row
    with torch.no_grad():
        draws = checkpoint.flow.sample(DRAWS, torch.Generator().manual_seed(seed + 1))
    mean_ref, sd_ref = np.asarray(ref["mean"]), np.asarray(ref["sd"])
    q_err, q_ratio, _, _, _ = compare(draws.double().numpy(), mean_ref, sd_ref)
    row.q_score = f"{q_err:.3f} / {q_ratio:.3f}"
    # what the user gets: samples.npy, q's own draws or MCMC's (FitConfig.sampler)
    row.sampler = getattr(report, "sampler", None) or "q"  # (nfcli before issue 27: q)
    chains = getattr(report, "chains", None)
    if chains is not None:
        row.sampler += f" (R-hat {chains['max_rhat'] or math.nan:.3f})"
    err, ratio, passes, worst_mean, worst_sd = compare(written, mean_ref, sd_ref)
    if not np.isfinite(written).all():
        row.note = f"{(~np.isfinite(written).all(axis=1)).sum()} non-finite draws left out"
    row.mean_err_sd, row.worst_sd_ratio, row.passes = err, ratio, passes
    row.verdict = report.verdict or ""
    row.steps = report.steps_done
    row.fit_s = float(report.wall_time_s or math.nan)
    row.flow = f"{report.flow} K={report.K}"
    row.worst_mean_coord = energy.names[worst_mean]
    row.worst_sd_coord = energy.names[worst_sd]
    return row


def fit_once(energy, config: FitConfig, name: str) -> tuple[Any, Any, np.ndarray, float]:
    """``run_fit`` into a temporary folder: the checkpoint, the report, the draws it wrote
    (samples.npy) and the whole call's seconds. An NfcliError passes through."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"nfcli-{name}-") as out:
        checkpoint, report = run_fit(energy, config, output=out, force=True)
        written = np.load(Path(out) / "samples.npy").astype(float)
    return checkpoint, report, written, time.perf_counter() - began


def compare(
    draws: np.ndarray, mean_ref: np.ndarray, sd_ref: np.ndarray
) -> tuple[float, float, bool, int, int]:
    """The worst |mean error| in reference sds, the sd ratio farthest from 1, whether every
    coordinate passes, and the coordinates of the two worst; non-finite draws left out."""
    finite = np.isfinite(draws).all(axis=1)
    x = draws[finite]
    mean_err = np.abs(x.mean(0) - mean_ref) / sd_ref
    ratio = x.std(0, ddof=1) / sd_ref
    worst_mean, worst_sd = int(np.argmax(mean_err)), int(np.argmax(np.abs(np.log(ratio))))
    passes = bool(
        finite.all()
        and (mean_err <= MEAN_TOL).all()
        and ((ratio >= SD_RATIO_LOW) & (ratio <= SD_RATIO_HIGH)).all()
    )
    return float(mean_err[worst_mean]), float(ratio[worst_sd]), passes, worst_mean, worst_sd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("names", nargs="*", help="posteriors to fit (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a FitConfig field, e.g. --set flow=realnvp --set iters=3000 --set hidden=64,64",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    args = ap.parse_args()
    names = args.names or available()
    missing = [n for n in names if n not in available()]
    if missing:
        ap.error(f"no posterior (with a reference) named {missing}; have {', '.join(available())}")
    settings = parse_settings(args.set)
    try:  # a bad --set stops here, not in every fit
        FitConfig(**settings).validate()
    except (NfcliError, TypeError, ValueError) as e:
        raise SystemExit(f"--set {' '.join(args.set)}: {e}") from None
    torch.set_num_threads(args.threads)

    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"nfcli {nfcli.__version__}, commit {nfcli_commit()}; torch {torch.__version__}")
    print(f"threads: {args.threads}; FitConfig set: {settings or 'nothing (defaults)'}\n")
    print(
        "| posterior | D | max abs mean err (sd) | worst sd ratio | pass | verdict | draws "
        "| q alone: err / sd ratio | steps | fit s | total s | flow | worst mean at "
        "| worst sd at | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:
        row = score(name, settings, args.seed)
        rows.append(row)
        print(row.markdown(), flush=True)
    passed = sum(r.passes for r in rows)
    print(
        f"\n{passed} of {len(rows)} pass (mean err ≤ {MEAN_TOL} sd, sd ratio in "
        f"[{SD_RATIO_LOW}, {SD_RATIO_HIGH}])."
    )
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow({c: getattr(r, c) for c in COLUMNS})


if __name__ == "__main__":
    main()
