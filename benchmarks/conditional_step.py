"""The cost of a conditional flow's training step (``nfcli.conditional.ConditionalFlow``):

    python benchmarks/conditional_step.py

One ``rsample(c, n)`` with c of M conditions and ``backward`` of the mean ln q (no energy, no
optimiser: the flow's share of a step), for planar K = 32 and RealNVP at its default K in 2-D,
next to the same for an unconditional ``Flow`` with M restarts (``rsample_all(n)``), the batched
computation the conditional one reuses. float32, one thread: the median of 5 rounds of
``--steps`` steps after 20 warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from nfcli.conditional import ConditionalFlow
from nfcli.flows import DEFAULT_K, Flow, architecture


def ms_per_call(fn: Callable[[], None], steps: int) -> float:
    for _ in range(20):
        fn()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        rounds.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--conditions", type=int, default=16, help="M")
    ap.add_argument("-n", type=int, default=64, help="draws per condition")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    M, n = args.conditions, args.n
    c = torch.rand(M, 1) * 2 - 1
    for kind, K in (("planar", 32), ("realnvp", DEFAULT_K["realnvp"])):
        arch = architecture(kind, K, dim=2)
        conditional = ConditionalFlow(2, arch, [-1.0], [1.0])
        flow = Flow(2, arch, restarts=M)

        def step_conditional(cf: ConditionalFlow = conditional) -> None:
            cf.zero_grad()
            cf.rsample(c, n)[1].mean().backward()

        def step_flow(f: Flow = flow) -> None:
            f.zero_grad()
            f.rsample_all(n)[1].mean().backward()

        psi = sum(conditional._sizes)
        t_cond = ms_per_call(step_conditional, args.steps)
        t_flow = ms_per_call(step_flow, args.steps)
        print(
            f"{kind} K={K} (2-D, {psi} flow parameters), M={M}, n={n}: "
            f"conditional {t_cond:.2f} ms, unconditional with M restarts {t_flow:.2f} ms"
        )


if __name__ == "__main__":
    main()
