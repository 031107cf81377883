"""Does the improper-target check (``nfcli.train.spreading``) stop what it should, and only that?

    .venv/bin/python benchmarks/improper.py                       # defaults, seeds 0 and 1
    .venv/bin/python benchmarks/improper.py --seeds 0 --iters 3000

Fits proper targets (every built-in and the examples) and improper ones (a free variable, the
paper's U2 without its soft box, a potential with no lower bound) with nfcli's defaults, and prints
a Markdown table: where each fit stopped and why, the largest loss fall and ln-extent growth over
any 500-step span after annealing, and the largest ``spread_score`` the check saw (it stops the
fit at 1: every criterion of ``spreading`` over its threshold). A proper target must run to the
end; an improper one must stop. A score of 1 or more on a proper target is a journey that the
check saw (q travelling far to its mass) and overruled, having found by L-BFGS from q's median a
proper mode ahead of q: the stopped column counts those checks.
"""

from __future__ import annotations

import argparse
import time

import torch

from nfcli.energy import load_energy
from nfcli.train import SPREAD_EXTENT, SPREAD_LOSS, SPREAD_SPAN, FitConfig, fit, spread_score

PROPER = [
    ("u1", None),
    ("u2", None),
    ("u3", None),
    ("u4", None),
    ("ring", None),
    ("ring8", None),
    ("moons", None),
    ("examples/funnel.py", None),
    ("examples/banana4d.py", None),
    ("log(1 + x**2) + log(1 + y**2)", None),  # Cauchy: proper, infinite variance
    ("0.5*((x - 60)**2 + (y + 60)**2)", None),  # proper, 85 units away: reached while annealing
    ("0.5*((x - 300)**2 + (y + 300)**2)", None),  # proper, far: q still travels after annealing
]
IMPROPER = [
    ("x**2/2", ["x", "y"]),  # y is free
    ("0.5*((y - sin(2*pi*x/4))/0.4)**2", None),  # U2 without the soft box
    ("x**2/2 - y", None),  # no lower bound
]


def largest_span(checks: list[dict]) -> tuple[float, float]:
    """The largest loss fall and ln-extent growth over any SPREAD_SPAN checks (restart 0)."""
    fall = grow = float("-inf")
    for a, b in zip(checks, checks[SPREAD_SPAN:], strict=False):
        fall = max(fall, a["loss"][0] - b["loss"][0])
        grow = max(grow, b["extent"][0] - a["extent"][0])
    return fall, grow


def stopped(r) -> str:
    """How the fit ended: '—' (every step), or why it stopped; with the number of checks at which
    the spreading rule fired but a proper mode ahead of q overruled it (``nfcli.train._check``)."""
    overruled = sum("modes" in c for c in r.state.checks)
    return (r.stopped or "—") + (f" (mode found at {overruled} checks)" if overruled else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--iters", type=int, default=FitConfig.iters)
    ap.add_argument("--only", default="", help="fit only the targets whose text contains this")
    args = ap.parse_args()
    torch.set_num_threads(1)  # 2-D fits gain nothing from a second thread (README, "Speed")
    print(f"thresholds per span: loss fall > {SPREAD_LOSS}, ln extent growth > {SPREAD_EXTENT}\n")
    print("| target | proper | seed | steps | stopped | max fall | max ln growth | max score | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for proper, targets in ((True, PROPER), (False, IMPROPER)):
        for text, names in targets:
            if args.only not in text:
                continue
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.perf_counter()
                energy = load_energy(text, names, check_proper=False)  # the fit must catch it
                r = fit(energy, FitConfig(iters=args.iters, seed=seed))
                fall, grow = largest_span(r.state.checks)
                score = max(
                    spread_score(r.state.checks[:i]) for i in range(len(r.state.checks) + 1)
                )
                print(
                    f"| `{text}`{' --vars ' + ','.join(names) if names else ''} | "
                    f"{'yes' if proper else 'no'} | {seed} | {r.steps} | {stopped(r)} | "
                    f"{fall:.3f} | {grow:.3f} | {score:.2f} | {time.perf_counter() - t0:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
