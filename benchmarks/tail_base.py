"""A Gaussian base against a Student-t base (learnt ν) on a heavy-tailed target.

    python benchmarks/tail_base.py                          # student5, realnvp K=4, 1500 steps
    python benchmarks/tail_base.py --target funnel10 --flow spline --seeds 0,1,2

Each seed fits the same flow twice, on the two bases of ``nfcli.flows.architecture(base=...)``,
and measures it with 20,000 fresh draws of q: KL(q‖p) = ln Z − ELBO against the target's exact
ln Z, Pareto k̂ of the importance weights (heavier target tails than q's show up here, as k̂ > 0.7),
the importance-sampling ln Z error, and the learnt degrees of freedom ν of the Student-t base
(min/median/max over the coordinates). Prints one Markdown row per fit. FitConfig's
``base="student_t"`` always mixes by permutation (what this measured); the script's ``BaseConfig``
adds the mixing choice, to measure both. The fits use the paper's setup (start at the origin,
annealed, every step: ``PAPER_SETUP``), as when the table below was measured.

Measured (student5, ν = 4, seeds 0-2, 1500 steps, one thread): realnvp K=4 with the default
orthogonal mixing, KL 0.041-0.049 on the Gaussian base and 0.026-0.048 on the Student-t base,
whose ν only reached 14-31 (7-10 after 5000 steps: KL 0.034 against 0.014); with
``--mixing permutation``, 0.073-0.130 against 0.0002-0.003, ν = 4.0-4.1 (one coordinate 6.9);
``--flow affine --K 1``, 0.128-0.131 against 0.0000-0.0001, ν = 4.0. A product of Student-t
coordinates is not rotation-invariant as a Gaussian is: the fixed rotations between couplings
scramble the coordinates whose tails the base learns, and a permutation does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nfcli import FitConfig, fit, load_energy
from nfcli.config import PAPER_SETUP
from nfcli.diagnostics import importance_sampling
from nfcli.flows import BASE_TYPES, MIXING, architecture

TARGETS = Path(__file__).parent / "targets"


@dataclass
class BaseConfig(FitConfig):
    mixing: str = MIXING

    def architecture(self) -> dict[str, Any]:
        return architecture(
            self.flow,
            self.K,
            self.init_scale,
            self.base_scale,
            self.hidden,
            self.bins,
            mixing=self.mixing,
            start=self.start,
            base=self.base,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="student5", help="a file in benchmarks/targets/")
    ap.add_argument("--flow", default="realnvp")
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--mixing", default=MIXING, help="between couplings: orthogonal, permutation")
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = TARGETS / f"{args.target}.py"
    spec = importlib.util.spec_from_file_location(args.target, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    energy, log_z = load_energy(str(path)), float(module.LOG_Z)
    print(
        "| target | flow | K | mixing | steps | seed | base | s | KL(q‖p) | k̂ | IS ln Z − ln Z "
        "| ν learnt |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        for base in BASE_TYPES:
            config = BaseConfig(
                **PAPER_SETUP,
                flow=args.flow,
                K=args.K,
                iters=args.iters,
                seed=seed,
                base=base,
                mixing=args.mixing,
            )
            start = time.perf_counter()
            result = fit(energy, config)
            seconds = time.perf_counter() - start
            with torch.random.fork_rng():
                torch.manual_seed(seed + 1)
                imp = importance_sampling(result.flow.eval(), energy, 20_000)
            nu = "–"
            if base == "student_t":
                dof = result.flow.base.dof.detach()[0]
                nu = f"{dof.min():.1f} / {dof.median():.1f} / {dof.max():.1f}"
            print(
                f"| {args.target} | {args.flow} | {args.K} | {args.mixing} | {result.steps} | "
                f"{seed} | {base} | "
                f"{seconds:.0f} | {log_z - imp.elbo:.4f} ± {imp.elbo_se:.4f} | {imp.khat:.2f} | "
                f"{imp.log_z - log_z:+.4f} | {nu} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
