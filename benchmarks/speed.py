"""nfcli against normflows, side by side in one process, alternating; and how nfcli scales.

    pip install normflows==1.7.3        # or: make bench-setup (a benchmark dependency only)
    python benchmarks/speed.py                       # every table, CPU, one thread
    python benchmarks/speed.py --tables identical --iters 3000 --rounds 2
    python benchmarks/speed.py --tables scaling --device cuda
    python benchmarks/speed.py --tables scaling --dims 128,1024 --Ks 32 --Rs 1 --no-memory-reuse

Tables (printed as Markdown):

* identical: the same work for both (target, K = 32 planar layers, batch 256, iterations, learning
  rate 5e-3 held constant, β annealed over 3/8 of the steps, float32, one thread): ms/iteration of
  each from step 100 on, nfcli eager (its reference path) and with the flow and U compiled
  (--compile-flow on --compile-energy on; its whole optimisation, compilations included, beside
  the eager one's), and their ratios, final KL(q‖p) of each (ln Z by quadrature, ELBO from 10⁵
  samples), and the peak memory of a run (a fresh child process per run: resident set growth on CPU,
  max_memory_allocated on CUDA). nfcli and normflows alternate target by target, round by round.
* quality: seconds of optimisation until KL(q‖p) ≤ 0.03 on U1 and ≤ 0.06 on U2–U4 (checked with a
  20,000-sample ELBO, not counted in the time, every 100 steps for nfcli, where its progress
  callback runs, and every 250 for normflows): nfcli at its defaults against
  normflows with the recipe of its planar example (Adam 1e-3, weight decay 1e-4, β annealed over
  10,000 steps, at most 20,000 steps) with K = 32 and batch 256 as in the first table.
* scaling: nfcli's ms/iteration and peak memory against D (a standard normal target), K and the
  number of restarts R.
* compile: nfcli's training step with and without torch.compile: compile time and ms/iteration.
* seeds: the identical-work KL on U1 for seeds 0…3 (one seed's KL is noisy after 2,000 steps).
* threads: nfcli at its defaults with one and two threads.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from provenance import nfcli_commit

import nfcli.train
from nfcli import FitConfig, fit, load_energy
from nfcli.config import PAPER_SETUP
from nfcli.diagnostics import importance_sampling
from nfcli.energy import Energy

# the planar flow with the paper's setup in any D (these tables were measured so; batch is set
# where each is used)
PLANAR = {"flow": "planar", "start": PAPER_SETUP["start"], "converge": PAPER_SETUP["converge"]}

TARGETS = ["u1", "u2", "u3", "u4"]
THRESHOLD = {"u1": 0.03, "u2": 0.06, "u3": 0.06, "u4": 0.06}


# --- the two libraries on the same work ----------------------------------------------------------


def identical_config(iters: int, dtype: str = "float32") -> FitConfig:
    return FitConfig(**PLANAR, K=32, batch=256, iters=iters, lr=5e-3, anneal=round(0.375 * iters),
                     decay=0.0, dtype=dtype)  # fmt: skip


def run_nfcli(energy: Energy, cfg: FitConfig, device: str, monitor=None):
    """(flow, optimisation seconds) of nfcli's own fit."""
    result = fit(energy, cfg, device=device, monitor=monitor)
    return result.flow, result.seconds


def normflows_model(energy: Energy, K: int, device: str, dtype: torch.dtype):
    import normflows as nf

    class Target(nf.distributions.Target):
        def log_prob(self, z):
            return -energy(z)

    flows = [nf.flows.Planar((energy.dim,)) for _ in range(K)]
    q0 = nf.distributions.DiagGaussian(energy.dim)
    return nf.NormalizingFlow(q0=q0, flows=flows, p=Target()).to(device=device, dtype=dtype)


def run_normflows(
    energy: Energy,
    K: int,
    batch: int,
    iters: int,
    lr: float,
    anneal: int,
    weight_decay: float,
    device: str,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    monitor: Callable | None = None,
    every: int = 250,
):
    """(model, optimisation seconds) of a normflows fit, its loop as in its planar example, but
    without the example's per-step host synchronisation (losses stay on the device)."""
    torch.manual_seed(seed)
    model = normflows_model(energy, K, device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses, paused = [], 0.0
    sync(device)
    start = time.perf_counter()
    for it in range(iters):
        opt.zero_grad()
        beta = min(1.0, 0.01 + it / anneal) if anneal else 1.0
        loss = model.reverse_kld(batch, beta=beta)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if monitor is not None and (it + 1) % every == 0:
            sync(device)
            t0 = time.perf_counter()
            stop = monitor(it + 1, model)
            paused += time.perf_counter() - t0
            if stop:
                break
    sync(device)
    return model, time.perf_counter() - start - paused


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def elbo_normflows(model, energy: Energy, n: int) -> float:
    torch.manual_seed(12345)  # the same Monte-Carlo draws for every evaluation
    parts = []
    for i in range(0, n, 50_000):
        z, log_q = model.sample(min(50_000, n - i))
        parts.append((-energy(z) - log_q).double().cpu())
    return float(torch.cat(parts).mean())


def elbo_nfcli(flow, energy: Energy, n: int) -> float:
    torch.manual_seed(12345)
    return importance_sampling(flow, energy, n).elbo


# --- peak memory, one fresh process per run ------------------------------------------------------


def probe(args: argparse.Namespace) -> None:
    """Child process: one short run; prints its peak memory in MiB as JSON."""
    torch.set_num_threads(args.threads)
    energy = make_energy(args.target, args.dim)

    def run(iters: int) -> None:
        if args.lib == "nfcli":
            cfg = FitConfig(**PLANAR, K=args.K, batch=args.batch, iters=iters, restarts=args.R,
                            compile_flow="off", compile_energy="off")  # fmt: skip
            run_nfcli(energy, cfg, args.device)
        else:
            run_normflows(energy, args.K, args.batch, iters, 5e-3, 0, 0.0, args.device)

    run(3)  # libraries' one-time allocations (thread pools, kernels) are not the run's
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = reset_peak_rss()
    run(args.probe_iters)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (peak_rss() - before) / 2**20
    print(json.dumps({"peak_mib": peak}))


def reset_peak_rss() -> int:
    """Reset the kernel's peak resident set (VmHWM) to the current one, and return it in bytes.
    (Linux ≥ 4.0; elsewhere ru_maxrss, which counts the imports' peak too.)"""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    try:
        return _status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(key)


def peak_memory(lib: str, target: str, dim: int, K: int, R: int, batch: int, args) -> float:
    cmd = [sys.executable, __file__, "--probe", "--lib", lib, "--target", target, "--dim",
           str(dim), "--K", str(K), "--R", str(R), "--batch", str(batch), "--device", args.device,
           "--threads", str(args.threads)]  # fmt: skip
    cmd += ["--no-memory-reuse"] if args.no_memory_reuse else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def make_energy(target: str, dim: int) -> Energy:
    if target != "normal":
        return load_energy(target)
    names = tuple(f"x{i + 1}" for i in range(dim))
    source = {"kind": "expression", "text": "standard normal", "path": None, "name": None,
              "vars": list(names)}  # fmt: skip
    return Energy(lambda z: 0.5 * (z * z).sum(-1), names, source, 0.5 * dim * math.log(2 * math.pi))


# --- tables --------------------------------------------------------------------------------------


STEADY_FROM = 100  # identical work's ms/step: from this step on, past start-up and compiling


def steady_clock() -> tuple[dict[str, float], Callable]:
    """A monitor that notes the time at step STEADY_FROM, and the dict it notes it in."""
    marks: dict[str, float] = {}

    def monitor(step: int, model) -> bool:
        if step == STEADY_FROM:
            marks["t"] = time.perf_counter()
        return False

    return marks, monitor


def table_identical(args) -> None:
    """The same work for nfcli eager (its reference path), nfcli with the flow and U compiled
    (``--compile-flow on --compile-energy on``) and normflows: ms/step from step STEADY_FROM to the
    end, and the compiled fit's whole optimisation (its compilations included) in seconds."""
    base = identical_config(args.iters)
    eager_cfg = replace(base, compile_flow="off", compile_energy="off")
    compiled_cfg = replace(base, compile_flow="on", compile_energy="on")
    rows: dict[str, dict[str, list[float]]] = {t: {} for t in TARGETS}
    steady = args.iters - STEADY_FROM

    def put(t: str, key: str, value: float) -> None:
        rows[t].setdefault(key, []).append(value)

    for r in range(args.rounds):
        for t in TARGETS:
            energy = load_energy(t)
            for key, cfg in (("nfcli", eager_cfg), ("compiled", compiled_cfg)):
                marks, monitor = steady_clock()
                result = fit(energy, cfg, device=args.device, monitor=monitor)
                sync(args.device)
                put(t, f"{key}_ms", 1000 * (time.perf_counter() - marks["t"]) / steady)
                put(t, f"{key}_kl", energy.log_z - elbo_nfcli(result.flow, energy, 10**5))
                put(t, f"{key}_s", result.seconds)
            marks, monitor = steady_clock()
            model, _ = run_normflows(energy, base.K, base.batch, base.iters, base.lr,
                                     base.anneal_steps, 0.0, args.device, monitor=monitor,
                                     every=STEADY_FROM)  # fmt: skip
            put(t, "nf_ms", 1000 * (time.perf_counter() - marks["t"]) / steady)
            put(t, "nf_kl", energy.log_z - elbo_normflows(model, energy, 10**5))
            print(f"  round {r + 1} {t}: nfcli {rows[t]['nfcli_ms'][-1]:.2f} ms/it, compiled "
                  f"{rows[t]['compiled_ms'][-1]:.2f} ({rows[t]['compiled_s'][-1]:.1f} s in all), "
                  f"normflows {rows[t]['nf_ms'][-1]:.2f} ms/it", file=sys.stderr)  # fmt: skip
    print(f"\n### Identical work: K = 32 planar, batch 256, {base.iters} steps, lr 5e-3, "
          f"β over {base.anneal_steps} steps, float32, {args.threads} thread(s), "
          f"{args.device} (nfcli {nfcli_commit()})\n")  # fmt: skip
    print("| target | nfcli ms/it | compiled ms/it | normflows ms/it | speed-up eager / compiled "
          "| compiled fit in all (eager) | KL(q‖p) nfcli / compiled / normflows "
          "| peak MiB nfcli / normflows |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for t in TARGETS:
        v = rows[t]
        a, c, b = min(v["nfcli_ms"]), min(v["compiled_ms"]), min(v["nf_ms"])
        mem_a = peak_memory("nfcli", t, 2, 32, 1, 256, args)
        mem_b = peak_memory("normflows", t, 2, 32, 1, 256, args)
        kls = " / ".join(f"{v[k][-1]:.3f}" for k in ("nfcli_kl", "compiled_kl", "nf_kl"))
        print(f"| {t} | {a:.2f} | {c:.2f} | {b:.2f} | {b / a:.1f}× / {b / c:.1f}× | "
              f"{min(v['compiled_s']):.1f} s ({min(v['nfcli_s']):.1f} s) | {kls} | "
              f"{mem_a:.2f} / {mem_b:.2f} |")  # fmt: skip
    print(f"\nms/it: steps {STEADY_FROM}–{args.iters}, the fastest of {args.rounds} rounds; "
          "compiled: --compile-flow on --compile-energy on, whose fit in all counts its "
          "compilations (from torch's cache after the first); KL: the last round.")  # fmt: skip


def table_seeds(args) -> None:
    """The identical-work KL on U1 over seeds: how much of a KL difference one seed can make."""
    energy, cfg = load_energy("u1"), identical_config(args.iters)
    print(f"\n### Identical work on U1 over seeds ({cfg.iters} steps): KL(q‖p)\n")
    print("| seed | nfcli | normflows |")
    print("|---|---|---|")
    for seed in range(args.seeds):
        cfg.seed = seed
        flow, _ = run_nfcli(energy, cfg, args.device)
        model, _ = run_normflows(energy, cfg.K, cfg.batch, cfg.iters, cfg.lr, cfg.anneal_steps,
                                 0.0, args.device, seed=seed)  # fmt: skip
        kl_a = energy.log_z - elbo_nfcli(flow, energy, 10**5)
        kl_b = energy.log_z - elbo_normflows(model, energy, 10**5)
        print(f"| {seed} | {kl_a:.4f} | {kl_b:.4f} |")


def table_threads(args) -> None:
    """nfcli at its defaults on U1 with one and two threads, alternating."""
    energy = load_energy("u1")
    cfg = FitConfig(**PLANAR, batch=1024, iters=600, anneal=200)
    print("\n### Threads (U1, defaults, 600 steps): ms/step\n")
    print("| round | 1 thread | 2 threads |")
    print("|---|---|---|")
    for r in range(args.rounds):
        cells = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            _, sec = run_nfcli(energy, cfg, args.device)
            cells.append(f"{1000 * sec / cfg.iters:.2f}")
        print(f"| {r + 1} | {cells[0]} | {cells[1]} |")
    torch.set_num_threads(args.threads)


def table_quality(args) -> None:
    print("\n### Time to quality (seconds of optimisation until KL(q‖p) ≤ the goal)\n")
    print("| target | goal | nfcli (defaults) | at step | normflows (example recipe, K = 32, "
          "batch 256) | at step | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for t in TARGETS:
        energy = load_energy(t)
        goal = THRESHOLD[t]
        res = {}
        for lib in ("nfcli", "normflows"):
            hit: dict[str, float] = {}
            clock = {"paused": 0.0, "start": time.perf_counter()}

            def check(step, model, lib=lib, hit=hit, clock=clock, energy=energy, goal=goal):
                if "step" in hit:
                    return True
                t0 = time.perf_counter()
                with torch.random.fork_rng(devices=[]):  # the fit's random stream is untouched
                    torch.manual_seed(step)
                    if lib == "nfcli":
                        elbo = elbo_nfcli(model, energy, 20_000)
                    else:
                        elbo = elbo_normflows(model, energy, 20_000)
                kl = energy.log_z - elbo
                if kl <= goal and "step" not in hit:
                    hit.update(step=step, seconds=t0 - clock["start"] - clock["paused"], kl=kl)
                clock["paused"] += time.perf_counter() - t0
                return "step" in hit

            if lib == "nfcli":
                cfg = FitConfig(**PLANAR, batch=1024)
                _, total = run_nfcli(energy, cfg, args.device, monitor=lambda s, f: check(s, f))
                res[lib] = (hit, cfg.iters, total - clock["paused"])
            else:
                _, total = run_normflows(energy, 32, 256, 20_000, 1e-3, 10_000, 1e-4,
                                         args.device, monitor=check)  # fmt: skip
                res[lib] = (hit, 20_000, total)
            print(f"  {t} {lib}: {hit or 'not reached'} ({res[lib][2]:.0f} s)", file=sys.stderr)
        cells = []
        for lib in ("nfcli", "normflows"):
            hit, iters, total = res[lib]
            if "step" in hit:
                cells += [f"{hit['seconds']:.1f} s", str(hit["step"])]
            else:
                cells += [f"not in {iters} steps ({total:.0f} s)", "—"]
        a, b = res["nfcli"][0], res["normflows"][0]
        if "step" in a and "step" in b:
            ratio = f"{b['seconds'] / a['seconds']:.0f}×"
        elif "step" in a:
            ratio = f"> {res['normflows'][2] / a['seconds']:.0f}×"
        else:
            ratio = "—"
        print(f"| {t} | {goal} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {ratio} |")


def time_steps(energy: Energy, cfg: FitConfig, device: str) -> float:
    """ms per step of nfcli's fit, after a short warm-up run."""
    run_nfcli(energy, FitConfig(**{**cfg.to_dict(), "iters": 20}), device)
    _, sec = run_nfcli(energy, cfg, device)
    return 1000 * sec / cfg.iters


def table_scaling(args) -> None:
    print(f"\n### Scaling (nfcli, planar, batch 256, {args.threads} thread(s), {args.device})\n")
    print("| what | value | ms/it | growth exponent from the previous row | peak MiB |")
    print("|---|---|---|---|---|")
    sweeps = [("D", d, dict(dim=d)) for d in args.dims]
    sweeps += [("K", k, dict(K=k)) for k in args.Ks]
    sweeps += [("R", r, dict(R=r)) for r in args.Rs]
    previous: dict[str, tuple[int, float]] = {}
    for what, value, kw in sweeps:
        dim, K, R = kw.get("dim", 2), kw.get("K", 32), kw.get("R", 1)
        energy = make_energy("normal", dim)
        iters = args.scaling_iters
        cfg = FitConfig(**PLANAR, K=K, batch=256, iters=iters, restarts=R, anneal=0,
                        compile_flow="off")  # fmt: skip
        ms = time_steps(energy, cfg, args.device)
        mem = peak_memory("nfcli", "normal", dim, K, R, 256, args)
        slope = ""
        if what in previous:  # ms ∝ value^slope between the two rows
            v0, ms0 = previous[what]
            slope = f"{math.log(ms / ms0) / math.log(value / v0):.2f}"
        previous[what] = (value, ms)
        print(f"| {what} | {value} | {ms:.2f} | {slope} | {mem:.1f} |")
    print("\nThe exponent is log(ms ratio) / log(value ratio) between a row and the one above: 1 "
          "means cost grows in proportion, below 1 less than in proportion.")  # fmt: skip


def table_compile(args) -> None:
    """torch.compile of the step (sample, energy, loss, backward) against the eager step."""
    energy = load_energy("u1")
    from nfcli.flows import Flow

    flow = Flow.of(2, 32, "planar", 0.25, 2.0)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3, fused=True)

    def step():
        z, log_q = flow.rsample_all(256)
        loss = (log_q + energy(z.reshape(-1, 2)).reshape(1, -1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    rows = []
    for name in ("eager", "compiled"):
        fn = step
        t0 = time.perf_counter()
        try:
            if name == "compiled":
                fn = torch.compile(step)
            fn()
            fn()
        except Exception as e:  # report, do not hide
            rows.append((name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", ""))
            continue
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.compile_iters):
            fn()
        ms = 1000 * (time.perf_counter() - t0) / args.compile_iters
        rows.append((name, f"{first:.1f} s", f"{ms:.2f}"))
    print("\n### torch.compile (U1, K = 32, batch 256)\n")
    print("| step | first two steps (compile) | ms/it after |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tables", default="identical,seeds,quality,scaling,compile,threads")
    p.add_argument("--iters", type=int, default=3000, help="steps in the identical-work table")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seeds", type=int, default=4, help="seeds in the seeds table")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--no-memory-reuse",
        action="store_true",
        help="glibc's default allocation, as fit had before it reused freed memory",
    )
    p.add_argument("--dims", default="2,16,128,1024,4096")
    p.add_argument("--Ks", default="2,8,32,128")
    p.add_argument("--Rs", default="1,4,16,32")
    p.add_argument("--scaling-iters", type=int, default=300)
    p.add_argument("--compile-iters", type=int, default=500)
    # the child process that measures peak memory
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", default="nfcli", help=argparse.SUPPRESS)
    p.add_argument("--target", default="u1", help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--K", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--R", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--probe-iters", type=int, default=200, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.no_memory_reuse:  # fit calls this once; as a no-op, glibc keeps its defaults
        nfcli.train.reuse_freed_memory = lambda: False
    if args.probe:
        probe(args)
        return
    torch.set_num_threads(args.threads)
    args.dims = [int(x) for x in args.dims.split(",")]
    args.Ks = [int(x) for x in args.Ks.split(",")]
    args.Rs = [int(x) for x in args.Rs.split(",")]
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} thread(s)")
    tables = {"identical": table_identical, "seeds": table_seeds, "quality": table_quality,
              "scaling": table_scaling, "compile": table_compile,
              "threads": table_threads}  # fmt: skip
    for name in args.tables.split(","):
        tables[name](args)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
