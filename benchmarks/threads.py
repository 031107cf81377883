"""Fit speed with 1 thread, 2 threads and ``--threads auto``, on a quiet machine and with one core
kept busy by a spinning process (the case that made torch's default 14–40× slower).

    .venv/bin/python benchmarks/threads.py                          # both cases, both loads
    .venv/bin/python benchmarks/threads.py --cases u1 --seconds 10 --no-plot
    .venv/bin/python benchmarks/threads.py --cases normal --dims 2,16,64,256,1024 --no-plot \
        --spinner none                                    # where a second thread starts to pay

Each cell is a short fit (nfcli's ``fit``, the defaults but ``--K``/``--batch`` as given, no
annealing) in this process: a warm-up of 5 steps, then steps until ``--iters`` are done or
``--seconds`` have passed, whichever comes first; it/s = steps / optimisation seconds. ``auto``
is what ``nfcli fit`` chooses for the case at that moment (``choose_threads`` with no
OMP_NUM_THREADS, so the policy itself is measured; the count it chose is in brackets). Cases:
u1 (D = 2) and a standard normal in D dimensions (``--dims``). The "busy" rows run while a
child process spins on one core (it exits by itself after ``--spin-limit`` seconds and is
stopped at the end). With ``--plot`` (the default) the table also has the wall time of
``nfcli plot`` (a fresh process, so torch's import is included) of a u1 fit.

The machine's load (/proc/loadavg) is printed before and after: other processes change the
numbers, and a "quiet" machine is only as quiet as they let it be.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nfcli import FitConfig, fit, load_energy, run_fit
from nfcli.config import PAPER_SETUP
from nfcli.energy import Energy
from nfcli.threads import Work, choose_threads, free_cores

# the planar flow with the paper's setup in any D (these tables were measured so; batch is set
# where each is used)
PLANAR = {"flow": "planar", "start": PAPER_SETUP["start"], "converge": PAPER_SETUP["converge"]}

SPIN = "import time\nend = time.time() + {limit}\nwhile time.time() < end:\n    pass\n"


def normal(dim: int) -> Energy:
    names = tuple(f"x{i + 1}" for i in range(dim))
    source = {"kind": "expression", "text": "standard normal", "path": None, "name": None,
              "vars": list(names)}  # fmt: skip
    return Energy(lambda z: 0.5 * (z * z).sum(-1), names, source, 0.5 * dim * math.log(2 * math.pi))


def its_per_second(energy: Energy, cfg: FitConfig, seconds: float) -> float:
    fit(energy, FitConfig(**PLANAR, K=cfg.K, batch=cfg.batch, iters=5, anneal=0))
    deadline = time.perf_counter() + seconds
    result = fit(energy, cfg, stop=lambda: time.perf_counter() > deadline)
    return result.iters_per_second


def plot_seconds(model: Path, threads: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("OMP_NUM_THREADS", None)  # --threads decides
    out = model.parent / f"plot-{threads}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nfcli", "plot", str(model), "-o", str(out),
                    "--threads", threads], check=True, env=env, capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="u1,normal", help="u1 and/or normal")
    p.add_argument("--dims", default="256,1024", help="D of the normal case(s)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--seconds", type=float, default=20.0, help="at most this long per cell")
    p.add_argument("--K", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--spin-limit", type=float, default=1800.0)
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--spinner", default="none,busy", help="none and/or busy (one core spinning)")
    args = p.parse_args()

    cases: list[tuple[str, Energy]] = []
    for c in args.cases.split(","):
        if c == "normal":
            cases += [(f"normal D={d}", normal(int(d))) for d in args.dims.split(",")]
        else:
            cases.append((c, load_energy(c)))
    cfg = FitConfig(**PLANAR, K=args.K, batch=args.batch, iters=args.iters, anneal=0)
    model = None
    if args.plot:
        folder = Path(tempfile.mkdtemp(prefix="nfcli-threads-"))
        torch.set_num_threads(1)
        run_fit(load_energy("u1"), FitConfig(iters=300), folder)  # the figures' fit, not timed
        model = folder / "model.pt"

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; K = {args.K}, batch {args.batch}, "
          f"up to {args.iters} steps or {args.seconds:g} s a cell")  # fmt: skip
    print(f"/proc/loadavg before: {loadavg()}\n")
    print("| spinner | 1-min load | case | 1 thread it/s | 2 threads it/s | auto it/s (threads) |")
    print("|---|---|---|---|---|---|")
    plots = []
    for load in args.spinner.split(","):
        spinner = None
        if load == "busy":
            code = SPIN.format(limit=args.spin_limit)
            spinner = subprocess.Popen([sys.executable, "-c", code])
            time.sleep(2.0)  # let it be scheduled and the load settle
        try:
            for name, energy in cases:
                cells = []
                for threads in (1, 2, None):
                    n = threads or choose_threads(None, Work(cfg.batch, energy.dim), environ={})
                    torch.set_num_threads(n)
                    rate = its_per_second(energy, cfg, args.seconds)
                    cells.append(f"{rate:.1f}" + ("" if threads else f" ({n})"))
                print(f"| {load} | {loadavg().split()[0]} | {name} | {' | '.join(cells)} |",
                      flush=True)  # fmt: skip
            if model is not None:
                seconds = [plot_seconds(model, t) for t in ("1", "2", "auto")]
                plots.append((load, seconds, free_cores()))
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    if plots:
        print("\n| spinner | nfcli plot u1, 1 thread | 2 threads | auto | free cores after |")
        print("|---|---|---|---|---|")
    for load, (s1, s2, sa), free in plots:
        print(f"| {load} | {s1:.1f} s | {s2:.1f} s | {sa:.1f} s | {free} |")
    print(f"\n/proc/loadavg after: {loadavg()}")


if __name__ == "__main__":
    main()
