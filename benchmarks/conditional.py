"""What amortisation buys and costs: one conditional fit of a family against separate fits.

    python benchmarks/conditional.py                          # u1_rotated and ring_width
    python benchmarks/conditional.py --only u1_rotated --separate 16
    python benchmarks/conditional.py --set iters=4000 --per-step 8

For each built-in family (nfcli.targets.FAMILIES) one conditional flow is fitted at the conditional
defaults (``default_config``, changed by --set) with ``nfcli.train_conditional.fit_conditional``,
then evaluated at 16 evenly spaced conditions (ends included) by
``nfcli.conditional_report.evaluate_at``: KL(q‖p) = ln Z − ELBO with ln Z by quadrature at each c
(independent of nfcli's fit), KL(p‖q), TV, k̂. With --separate N, N unconditional default fits
(``nfcli.train.fit`` on ``ConditionalEnergy.at``) at the first N of those conditions give the price
of fitting each c alone: their KL and their total time. Prints the command line, the commit and one
Markdown row per family (and per separate set).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch
from posteriors import parse_settings
from provenance import nfcli_commit

from nfcli.conditional_report import evaluate_at, summarise
from nfcli.conditions import load_conditional_energy
from nfcli.run import evaluate
from nfcli.targets import FAMILIES
from nfcli.train import fit
from nfcli.train_conditional import (
    CONDITIONS_PER_STEP,
    default_config,
    fit_conditional,
    fit_conditional_restarts,
)

GRID = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(FAMILIES))
    ap.add_argument("--set", action="append", default=[], help="FitConfig field=value")
    ap.add_argument("--per-step", type=int, default=CONDITIONS_PER_STEP)
    ap.add_argument("--separate", type=int, default=0, help="unconditional fits to compare")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"nfcli commit {nfcli_commit()}; torch {torch.__version__}; threads {args.threads}\n")
    print(
        "| family | fit | conditions | mean KL(q‖p) | worst KL (at) | mean KL(p‖q) | "
        "worst TV | worst k̂ | fit s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.only.split(","):
        energy = load_conditional_energy(name, [])
        config = default_config(**parse_settings(args.set))
        t0 = time.perf_counter()
        if config.restarts > 1:  # R fits to the end of annealing, the best by mean ELBO on
            result = fit_conditional_restarts(energy, config, per_step=args.per_step).result
        else:
            result = fit_conditional(energy, config, per_step=args.per_step)
        seconds = time.perf_counter() - t0
        grid = torch.linspace(energy.lo.item(), energy.hi.item(), GRID, dtype=torch.float64)
        points = evaluate_at(result.flow, energy, grid[:, None])
        s = summarise(points)
        kl_pq = statistics.fmean(p.kl_pq for p in points if p.kl_pq is not None)
        tv = max(p.tv for p in points if p.tv is not None)
        print(
            f"| {name} | conditional, {result.config.flow} K={result.config.K}, seed "
            f"{config.seed}{f', restarts {config.restarts}' if config.restarts > 1 else ''} | "
            f"{GRID} | "
            f"{s.mean_kl_qp:.4f} | {s.worst_kl_qp:.4f} ({s.worst_kl_at[0]:.2f}) | {kl_pq:.4f} | "
            f"{tv:.3f} | {s.worst_khat:.2f} | {seconds:.0f} |",
            flush=True,
        )
        if args.separate:
            kls, total = [], 0.0
            for c in grid[: args.separate]:
                e = energy.at(c[None])
                t0 = time.perf_counter()
                single = fit(e, config)
                total += time.perf_counter() - t0
                r = evaluate(single.flow, e, single.flow.sample(20_000), sets=1)
                kls.append(r.kl_qp)
            print(
                f"| {name} | {args.separate} separate fits | {args.separate} | "
                f"{statistics.fmean(kls):.4f} | {max(kls):.4f} | | | | {total:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
