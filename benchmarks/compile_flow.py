"""When compiling the flow's training step pays (issue 18; ``fit --compile-flow``).

    python benchmarks/compile_flow.py                  # the default cases, one thread
    python benchmarks/compile_flow.py --cases spline:10:256,planar:2:1024
    python benchmarks/compile_flow.py --device cuda    # make bench-gpu (not yet run: no GPU)

For each case (flow type : D : batch, the flow's architecture as ``nfcli fit`` builds it for a
target of D dimensions) a fresh process with an empty torch compile cache times the flow's step
(``Flow.push`` forward and backward, ε drawn outside) eager and compiled, and how long the first
compilation took; a second fresh process on the same cache times the cached compilation. The
break-even is the number of steps over which the compiled step saves its compilation's time.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from provenance import nfcli_commit

CASES = (
    "planar:2:256,planar:2:1024,radial:2:1024,realnvp:5:256,realnvp:20:256,realnvp:50:256,"
    "spline:2:1024,spline:5:256,spline:20:256,spline:50:256"
)

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from nfcli.compiled import time_flow
from nfcli.config import FitConfig
from nfcli.flows import Flow
kind, D, B, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
flow = Flow(D, FitConfig(flow=kind).resolve(D).architecture(D), 1).to(device)
eps = torch.randn(1, B, D, device=device)
calls = max(5, int(2000 / max(B * D, 1)))
eager = min(time_flow(flow.push, flow, eps, calls) for _ in range(3))
fn = torch.compile(flow.push, dynamic=False)
t = time.perf_counter()
time_flow(fn, flow, eps, 0)
compiling = time.perf_counter() - t
compiled = min(time_flow(fn, flow, eps, calls) for _ in range(3))
print("RESULT " + json.dumps({"eager": eager, "compiled": compiled, "compiling": compiling}))
"""


def child(case: list[str], cache: str, device: str) -> dict[str, float]:
    env = {"TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, *case, device]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default=CASES, help="flow:D:batch, comma-separated")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rows = []
    for text in args.cases.split(","):
        case = text.split(":")
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            cold = child(case, cache, args.device)
            cached = child(case, cache, args.device)
        print(f"  {text}: {cold} / {cached} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        rows.append((case, cold, cached))
    print(f"\n### The flow's step compiled (nfcli {nfcli_commit()}, {args.device}, one thread)\n")
    print("| flow | D | batch | eager ms | compiled ms | saved | compiling, cold | cached | pays "
          "after (cold / cached) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (kind, D, B), cold, cached in rows:
        eager = min(cold["eager"], cached["eager"])
        compiled = min(cold["compiled"], cached["compiled"])
        saved = eager - compiled
        if saved > 0:
            pays = (f"{cold['compiling'] / saved * 1000:,.0f} / "
                    f"{cached['compiling'] / saved * 1000:,.0f} steps")  # fmt: skip
        else:
            pays = "never"
        print(f"| {kind} | {D} | {B} | {eager:.2f} | {compiled:.2f} | {saved / eager:.0%} | "
              f"{cold['compiling']:.1f} s | {cached['compiling']:.1f} s | {pays} |")  # fmt: skip
    print("\neager, compiled: ms per step of the flow (forward and backward), the best of three "
          "timings; saved: the share of the eager step; compiling: the first step's time, with "
          "torch's cache empty and then filled by the first process.")  # fmt: skip


if __name__ == "__main__":
    main()
