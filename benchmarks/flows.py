"""Flow types side by side on targets whose ln Z is known exactly (README, "The flows: measured").

    python benchmarks/flows.py                              # every target and flow type, ~1 h
    python benchmarks/flows.py --targets u1,gauss8 --flows planar,spline --iters 8000

Each target is fitted with each flow type at its defaults (K, --hidden, --bins) for --iters steps
(the same for all), seed 0, one thread. Then, with 20,000 fresh draws of the fitted q:
KL(q‖p) = ln Z − ELBO against the exact ln Z (not an nfcli estimate: the built-ins' reference
values, or the LOG_Z that each file in benchmarks/targets/ derives in closed form), Pareto k̂,
and the importance-sampling ln Z error. Prints one Markdown row per fit as it finishes.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from nfcli import FitConfig, fit, load_energy
from nfcli.config import PAPER_SETUP
from nfcli.diagnostics import importance_sampling
from nfcli.flows import FLOW_TYPES

HERE = Path(__file__).parent
FILES = {p.stem: p for p in sorted((HERE / "targets").glob("*.py"))}
FILES["banana4d"] = HERE.parent / "examples" / "banana4d.py"
FILES["funnel2"] = HERE.parent / "examples" / "funnel.py"
TARGETS = [
    "u1",
    "u2",
    "u3",
    "u4",
    "funnel2",
    "banana4d",
    "student5",
    "mixture6",
    "gauss8",
    "funnel10",
]


def reference_log_z(name: str, energy) -> float:
    if name not in FILES:
        return float(energy.log_z)
    spec = importlib.util.spec_from_file_location(name, FILES[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return float(module.LOG_Z)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--flows", default=",".join(FLOW_TYPES))
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--header", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.header:
        print("| target | D | flow | K | ms/step | KL(q‖p) | k̂ | IS ln Z − ln Z |")
        print("|---|---|---|---|---|---|---|---|")
    for name in args.targets.split(","):
        energy = load_energy(str(FILES[name]) if name in FILES else name)
        log_z = reference_log_z(name, energy)
        for flow in args.flows.split(","):
            config = FitConfig(**PAPER_SETUP, flow=flow, iters=args.iters, seed=args.seed)
            start = time.perf_counter()
            result = fit(energy, config)
            ms = (time.perf_counter() - start) / args.iters * 1000
            with torch.random.fork_rng():
                torch.manual_seed(args.seed + 1)
                imp = importance_sampling(result.flow.eval(), energy, 20_000)
            kl = log_z - imp.elbo
            err = imp.log_z - log_z
            print(
                f"| {name} | {energy.dim} | {flow} | {config.K} | {ms:.1f} | {kl:.3f} ± "
                f"{imp.elbo_se:.3f} | {imp.khat:.2f} | {err:+.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
