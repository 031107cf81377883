"""A slow user energy fitted with and without torch.compile (issue 18): the GARCH posterior of
benchmarks/posteriors/garch.py, a Python loop over 200 time steps, at nfcli's defaults.

    python benchmarks/compile_energy.py                    # off and auto, one after the other
    python benchmarks/compile_energy.py --modes auto --seed 1
    python benchmarks/compile_energy.py --modes off,on --compile-flow on   # the flow compiled too

Each fit is ``nfcli.run.run_fit`` (the whole ``nfcli fit`` but the CLI) on one thread, with
each ``--compile-energy`` of ``--modes`` in turn (auto leaves this U eager: over the 2,000 steps
at which the fit converges its eager calls cost less than twice a compilation) and the flow's
``--compile-flow`` as given. Prints the command, the commit and one Markdown row per mode: the
optimisation's seconds (with the search for the Gaussian start and the compilation, which happen
before the first step; the compilation also apart), steps run (the fit stops once its loss has
levelled off), ms per step, the energy's share of the steps, the ELBO and k̂ of the trust report,
and what ``choose_energy`` said. The posterior means against the NumPyro reference are in
benchmarks/posteriors.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from provenance import nfcli_commit

from nfcli.config import FitConfig
from nfcli.energy import load_energy
from nfcli.run import run_fit

GARCH = Path(__file__).parent / "posteriors" / "garch.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="off,auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile-flow", default="off", help="--compile-flow of every run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"nfcli commit {nfcli_commit()}; torch {torch.__version__}; one thread\n")
    print(f"--compile-flow {args.compile_flow}\n")
    print(
        "| --compile-energy | fit s (compile s) | steps | ms/step less compile | U share | ELBO "
        "| k̂ | note |"
    )
    print("|---|---|---|---|---|---|---|---|")
    energy = load_energy(str(GARCH))
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            cfg = FitConfig(seed=args.seed, compile_energy=mode, compile_flow=args.compile_flow)
            _, r = run_fit(energy, cfg, out)
            whole = time.perf_counter() - t0
        note = r.energy_compiled or "eager"
        notes = f"{note}; flow: {r.flow_compiled}" if r.flow_compiled else note
        spent = sum(float(n.split("compiling took ")[1].split(" s")[0])
                    for n in (note, r.flow_compiled or "") if "took" in n)  # fmt: skip
        print(
            f"| {mode} | {r.wall_time_s:.0f} ({spent:.0f}) | {r.steps_done} | "
            f"{1000 * (r.wall_time_s - spent) / r.steps_done:.1f} | "
            f"{r.energy_share:.0%} | {r.elbo:.3f} | {r.khat:.2f} | {notes}; the whole run "
            f"{whole:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
