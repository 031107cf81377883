"""How noisy is the trust report, and what does it say of heavy tails? (README, "The trust report")

    python benchmarks/trust_noise.py              # ~5 min on 2 cores: two fits at the defaults

For each target, one fit at the defaults (seed 0), then the trust report's k̂ and ESS on each of
the independent sets of draws that ``evaluate`` makes, for several evaluation seeds, and the
verdict with its first reason; for the 1-D Student-t also its quantiles against the exact ones.
"""

from __future__ import annotations

import argparse

import torch

from nfcli import FitConfig, fit, load_energy
from nfcli.diagnostics import verdict
from nfcli.run import evaluate

TARGETS = [
    ("banana", "x**2/2 + 2*(y - x**2/4)**2", {}),
    ("student-t, nu = 3", "(nu+1)/2*log(1 + x**2/nu)", {"nu": 3.0}),
]
# exact quantiles of Student's t with ν = 3 at 5%, 25%, 50%, 75%, 95%
T3_QUANTILES = [-2.3534, -0.7649, 0.0, 0.7649, 2.3534]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=8000)
    p.add_argument("--seeds", type=int, default=2, help="evaluation seeds per fit")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| target | eval seed | k̂ per set | ESS per set | verdict | first reason |")
    print("|---|---|---|---|---|---|")
    for label, text, constants in TARGETS:
        energy = load_energy(text, constants=constants)
        result = fit(energy, FitConfig(iters=args.iters))
        flow = result.flow.eval()
        samples = flow.sample(10_000, torch.Generator().manual_seed(0))
        for seed in range(args.seeds):
            r = evaluate(flow, energy, samples, seed)
            level, reasons = verdict(r)
            ks = ", ".join(f"{k:.2f}" for k in r.khat_replicates)
            es = ", ".join(f"{e:.1%}" for e in r.ess_fraction_replicates)
            print(f"| {label} | {seed} | {ks} | {es} | {level} | {reasons[0][:90]}… |")
        if energy.dim == 1:
            with torch.no_grad():
                z = flow.sample(200_000, torch.Generator().manual_seed(1))[:, 0].double()
            q = torch.quantile(z, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=z.dtype))
            pairs = zip(q.tolist(), T3_QUANTILES, strict=True)
            diffs = ", ".join(f"{a - b:+.3f}" for a, b in pairs)
            print(f"\n{label}: q's quantiles (5/25/50/75/95%) minus the exact ones: {diffs}\n")


if __name__ == "__main__":
    main()
