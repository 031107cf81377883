"""Batched restarts: their cost, and how often the kept fit has every mode.

    .venv/bin/python benchmarks/restarts.py              # both tables (about 20 minutes)
    .venv/bin/python benchmarks/restarts.py --seeds 5    # a quicker look

Table 1, cost: fits of U1 at the default settings (8,000 steps) with R = 1 and R = 8, run
alternately in this one process (2 rounds), so that machine noise hits both alike; it reports the
median time of the whole fit (the optimisation, including choosing the kept restart when annealing
ends) per step and in all, and the ratio.

Table 2, lost modes: for each seed, one fit with R = 1 and one with R = 8 (the kept restart), and
whether the fit has every mode. U1: both halves z1 < 0 and z1 > 0 hold at least 25% of 20,000
samples (the target: 50% each). ring8: each of the 8 Gaussians is the nearest centre of at least a
quarter of its share (1/32) of 20,000 samples. The settings are short fits (K = 16, 1,500 steps),
for ring8 also without annealing, where single fits lose modes most often (restarts then run to
the end: there is no annealing phase to choose at).
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from nfcli.energy import load_energy
from nfcli.train import FitConfig, fit

ROWS = {  # name: (target, settings)
    "u1": ("u1", {"K": 16, "iters": 1500}),
    "ring8": ("ring8", {"K": 16, "iters": 1500}),
    "ring8-no-anneal": ("ring8", {"K": 16, "iters": 1500, "anneal": 0}),
}


def has_every_mode(target: str, samples: torch.Tensor) -> bool:
    if target == "u1":
        right = (samples[:, 0] > 0).double().mean().item()
        return 0.25 <= right <= 0.75
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles)], 1)
    nearest = torch.cdist(samples, centres).argmin(1)
    share = torch.bincount(nearest, minlength=8).double() / len(samples)
    return bool((share >= 1 / 32).all())


def cost_table(rounds: int = 2) -> None:
    energy = load_energy("u1")
    seconds: dict[int, list[float]] = {1: [], 8: []}
    for _ in range(rounds):
        for R in (1, 8):
            seconds[R].append(fit(energy, FitConfig(restarts=R)).seconds)
    iters = FitConfig().iters
    s1, s8 = statistics.median(seconds[1]), statistics.median(seconds[8])
    print("| restarts | ms per step | fit s | ratio |")
    print("|---|---|---|---|")
    print(f"| 1 | {s1 / iters * 1000:.2f} | {s1:.1f} | 1 |")
    print(f"| 8 | {s8 / iters * 1000:.2f} | {s8:.1f} | {s8 / s1:.2f} |\n", flush=True)


def coverage_table(seeds: int, rows: list[str]) -> None:
    print("| target | settings | seeds | every mode, R = 1 | every mode, R = 8 (kept) |")
    print("|---|---|---|---|---|")
    for target, settings in (ROWS[name] for name in rows):
        energy = load_energy(target)
        found = {1: 0, 8: 0}
        for seed in range(seeds):
            for R in (1, 8):
                result = fit(energy, FitConfig(**settings, seed=seed, restarts=R))
                samples = result.flow.sample(20_000, torch.Generator().manual_seed(0))
                found[R] += has_every_mode(target, samples)
        print(
            f"| {target} | {settings} | {seeds} | {found[1]}/{seeds} ({found[1] / seeds:.0%}) | "
            f"{found[8]}/{seeds} ({found[8] / seeds:.0%}) |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"any of {', '.join(ROWS)}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.skip_cost:
        cost_table()
    coverage_table(args.seeds, args.rows.split(","))


if __name__ == "__main__":
    main()
