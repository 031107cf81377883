"""Quality at defaults: `nfcli fit u1` … `u4` with no other option, timed, KL from quadrature ln Z.

    .venv/bin/python benchmarks/quality.py                 # seed 0, the README's table
    .venv/bin/python benchmarks/quality.py --seeds 0,1,2   # robustness across seeds

Runs the real command in a subprocess, one at a time (do not run anything else meanwhile), and
prints a Markdown table: target, K, iterations, fit seconds, whole-command seconds, KL(q‖p) with its
Monte-Carlo standard error, and whether it meets the goal (≤ 0.03 nats on U1, ≤ 0.06 on U2–U4, fit
in under 60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"u1": 0.03, "u2": 0.06, "u3": 0.06, "u4": 0.06}
NFCLI = [sys.executable, "-m", "nfcli"]


def torch_version() -> str:
    import torch

    return str(torch.__version__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--targets", default="u1,u2,u3,u4")
    ap.add_argument("--seeds", default="0", help="comma-separated; 0 is the default seed")
    ap.add_argument("extra", nargs="*", help="extra options for nfcli fit (after --)")
    args = ap.parse_args()
    print(
        f"nfcli fit at defaults; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch_version()}\n"
    )
    print("| target | seed | K | iterations | fit s | command s | KL(q‖p) nats | goal | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for target in args.targets.split(","):
        for seed in args.seeds.split(","):
            with tempfile.TemporaryDirectory() as out:
                cmd = [*NFCLI, "fit", target, "-o", out, *args.extra]
                if seed != "0":
                    cmd += ["--seed", seed]
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                command_s = time.perf_counter() - start
                if proc.returncode != 0:
                    print(f"| {target} | {seed} | failed: {proc.stderr.strip()[-300:]} |")
                    failures += 1
                    continue
                m = json.loads(Path(out, "metrics.json").read_text())
            goal = GOALS.get(target)
            ok = goal is None or (m["kl_qp"] <= goal and m["wall_time_s"] < 60)
            failures += not ok
            print(
                f"| {target} | {seed} | {m['K']} | {m['iters']} | {m['wall_time_s']:.1f} | "
                f"{command_s:.1f} | {m['kl_qp']:.4f} ± {m['kl_qp_se']:.4f} | "
                f"{'≤ ' + str(goal) if goal else '—'} | {'yes' if ok else 'NO'} |",
                flush=True,
            )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
