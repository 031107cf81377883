"""The training step's time, for comparing two versions of nfcli (README, "Speed").

    python benchmarks/step_time.py               # the nfcli that Python imports

A/B against an older commit, alternating so that both see the same machine:

    git worktree add /tmp/old <commit>
    for i in 1 2; do
      PYTHONPATH=/tmp/old python benchmarks/step_time.py --label old
      PYTHONPATH=$PWD python benchmarks/step_time.py --label new
    done

U1, K = 32 planar layers, batch 256, fused Adam, one thread: the best of 5 rounds of 200 steps
after 20 warm-up steps. Works with the Flow API before and after the transform design.
"""

from __future__ import annotations

import argparse
import time

import torch

from nfcli.energy import load_energy
from nfcli.flows import Flow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--label", default="nfcli")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    energy = load_energy("u1")
    if hasattr(Flow, "of"):
        flow = Flow.of(2, 32, "planar", 0.25, 2.0)
    else:  # before the transform design: Flow(dim, K, kind, init_scale, base_scale)
        flow = Flow(2, 32, "planar", 0.25, 2.0)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        z, log_q = flow.rsample_all(256)
        loss = (log_q + energy(z.reshape(-1, 2)).reshape(1, -1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        best = min(best, (time.perf_counter() - start) / args.steps * 1000)
    print(f"{args.label}: {best:.2f} ms/step")


if __name__ == "__main__":
    main()
