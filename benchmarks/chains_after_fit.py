"""How many chains, and how long, for the MCMC that corrects a fit's draws (nfcli fit --sampler).

    python benchmarks/chains_after_fit.py runs/garch/model.pt garch --settings 16x300+625,32x200+313

For a fitted model.pt of one of benchmarks/posteriors/ (fit it first with --sampler q, so that
the fit itself runs no chains), runs NeuTra HMC with the flow at each setting CxW+N (C chains,
W warm-up iterations, N kept draws each) and prints, per setting, the seconds, the largest R-hat,
the smallest bulk and tail ESS, and the draws' worst |mean error| in reference sds and the sd
ratio farthest from 1 against the posterior's reference (q's own draws first, for comparison).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from posteriors import REFERENCE

from nfcli.checkpoint import load_checkpoint
from nfcli.energy import energy_from_source
from nfcli.mcmc.chains import McmcSettings, run_mcmc


def score(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> str:
    err = np.abs(x.mean(0) - mean) / sd
    ratio = x.std(0, ddof=1) / sd
    return f"mean err {err.max():.3f} sd, sd ratio {ratio[np.argmax(np.abs(np.log(ratio)))]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("posterior", help="its name in benchmarks/posteriors/ (for the reference)")
    ap.add_argument("--settings", default="16x300+625,32x200+313,64x150+157")
    ap.add_argument("--method", default="neutra")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.model)
    energy = energy_from_source(ckpt.energy_source, True)
    ref = json.loads((REFERENCE / f"{args.posterior}.json").read_text())
    mean, sd = np.asarray(ref["mean"]), np.asarray(ref["sd"])
    q = ckpt.flow.sample(20_000, torch.Generator().manual_seed(1)).double().numpy()
    print(f"{args.posterior}: q's own draws: {score(q, mean, sd)}")
    for setting in args.settings.split(","):
        chains, rest = setting.split("x")
        warmup, draws = rest.split("+")
        s = McmcSettings(args.method, int(chains), int(draws), int(warmup))
        t0 = time.perf_counter()
        run = run_mcmc(energy, s, ckpt.flow)
        x = run.chains.draws.reshape(-1, energy.dim).numpy()
        rhat = max(v.rhat for v in run.variables)
        bulk = min(v.ess_bulk for v in run.variables)
        tail = min(v.ess_tail for v in run.variables)
        print(
            f"{setting}: {time.perf_counter() - t0:.1f} s, R-hat {rhat:.3f}, ESS {bulk:.0f} / "
            f"{tail:.0f}, {score(x, mean, sd)}"
        )


if __name__ == "__main__":
    main()
