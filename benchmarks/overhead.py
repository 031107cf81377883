"""Where a whole `nfcli fit` command spends its time outside the optimisation (issue 18).

    python benchmarks/overhead.py                 # nfcli fit u1 at the defaults, 3 rounds
    python benchmarks/overhead.py --target u3 --rounds 1 --args "--iters 2000"

Runs the command in a fresh process per round (``python -m nfcli fit TARGET -o DIR --force``,
one thread) with every stage of ``nfcli.run.run_fit`` timed by wrappers installed before it runs:
the interpreter's start-up, the imports,
the optimisation (``nfcli.train.fit``), q's draws, the trust report (``nfcli.run.evaluate``:
importance sampling, quadrature, KL(p‖q), the mode search; of it, KL(p‖q) and TV on a grid,
which inverts the flow at every cell), writing model.pt and samples.npy, the figures
(``nfcli.figures.write_figures``; of them, the density grids, and each figure's save), for a
built-in 2-D target q on density.png's grid before both (``nfcli.figures.density_q``), and the
rest (the summary table, exit). Prints one Markdown row per stage: the median over rounds, in
seconds; an "of it" row is part of the row after it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import nfcli_commit

CHILD = r"""
import gc, json, sys, time
entered = time.time()
t0 = time.perf_counter()
gc.disable()  # as nfcli.launch, the command's entry point, imports the command line
import nfcli.cli as cli, nfcli.run as run, nfcli.figures as figures, nfcli.flows as flows
gc.freeze()
gc.enable()
times = {"python start-up": entered - float(sys.argv[1]), "imports": time.perf_counter() - t0}
def timed(module, name, label):
    fn = getattr(module, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            times[label] = times.get(label, 0.0) + time.perf_counter() - t
    setattr(module, name, wrapper)
timed(cli, "load_energy", "the energy (parse, compile)")
timed(cli, "use_threads", "thread choice")
timed(run, "fit", "optimisation (nfcli.train.fit)")
timed(flows.Flow, "sample", "q's draws")
timed(run, "density_q", "q on density.png's grid, for the figure and the report (inverts q)")
timed(run, "evaluate", "trust report (evaluate)")
timed(run, "compare_on_grid", "trust report: of it, KL(p‖q) and TV on a grid (inverts q)")
timed(run, "save_checkpoint", "model.pt")
timed(run, "save_samples", "samples.npy")
timed(run, "write_figures", "figures, all")
timed(figures, "density_grid", "figures: of them, p's density grid")
timed(figures, "density_q", "figures: of them, q's density grid where not given (inverts q)")
timed(figures, "save_figure", "figures: rendering and saving")
sys.argv = ["nfcli", "fit", *sys.argv[2:]]
began = time.perf_counter()
try:  # cli.main's app, then its fast exit (os._exit) once the times are printed
    cli.app(args=cli.protect_expressions(sys.argv[1:]), prog_name="nfcli")
except SystemExit:
    pass
times["the command inside python"] = time.perf_counter() - began
print("TIMES " + json.dumps(times), flush=True)
import os
os._exit(0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="u1")
    ap.add_argument("--args", default="", help="more nfcli fit options, one string")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"nfcli commit {nfcli_commit()}; one thread\n")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            launched = time.time()
            cmd = [sys.executable, "-c", CHILD, repr(launched), args.target]
            cmd += ["-o", str(Path(tmp) / "run"), "--force", "--threads", "1"]
            cmd += shlex.split(args.args)
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            whole = time.time() - launched
            line = next(x for x in done.stdout.splitlines() if x.startswith("TIMES "))
            times = json.loads(line[6:])
            times["whole command"] = whole
            rounds.append(times)
    keys = list(rounds[0])
    median = {k: statistics.median(r[k] for r in rounds) for k in keys}
    outside = median["whole command"] - median["optimisation (nfcli.train.fit)"]
    print("| stage | seconds (median) |")
    print("|---|---|")
    for k in keys:
        print(f"| {k} | {median[k]:.2f} |")
    print(f"| **outside the optimisation** | **{outside:.2f}** |")


if __name__ == "__main__":
    main()
