"""KL(q‖p) of one configuration over targets and seeds: how the defaults were chosen.

    .venv/bin/python benchmarks/sweep.py '{"batch": 256, "iters": 6000}' --seeds 0,1,2
    .venv/bin/python benchmarks/sweep.py '{}' --targets u3,u4          # the current defaults

The JSON object overrides FitConfig's defaults (keys: the fields of nfcli.train.FitConfig). Each fit
runs in this process on one thread; KL = ln Z − ELBO, the ELBO from 50,000 fresh samples and the
built-in's reference ln Z. Prints one Markdown row per fit and a last row with the worst KL.
"""

from __future__ import annotations

import argparse
import json

import torch

from nfcli.diagnostics import importance_sampling
from nfcli.energy import load_energy
from nfcli.train import FitConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("config", help="JSON overrides, e.g. '{\"K\": 16}'")
    ap.add_argument("--targets", default="u1,u2,u3,u4")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    overrides = json.loads(args.config)
    print(f"config: {FitConfig(**overrides)}\n")
    print("| target | seed | fit s | KL(q‖p) nats |")
    print("|---|---|---|---|")
    worst = 0.0
    for name in args.targets.split(","):
        energy = load_energy(name)
        for seed in (int(s) for s in args.seeds.split(",")):
            result = fit(energy, FitConfig(**{**overrides, "seed": seed}))
            torch.manual_seed(123)
            kl = energy.log_z - importance_sampling(result.flow, energy, 50_000).elbo
            worst = max(worst, kl)
            print(f"| {name} | {seed} | {result.seconds:.1f} | {kl:.4f} |", flush=True)
    print(f"| worst | | | {worst:.4f} |")


if __name__ == "__main__":
    main()
