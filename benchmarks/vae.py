"""The paper's Table 2 on this machine: test −ln p(x) of a VAE on binarised MNIST against the
length K of its planar-flow posterior, at the "cpu" budget (or --budget paper on a GPU).

    python benchmarks/vae.py                                   # K = 0,10,20,40,80, 2 at a time
    python benchmarks/vae.py --K 0,10 --updates 2000 --jobs 2 --data synthetic   # a quick check

Each K is one ``nfcli.vae.run.run_vae`` (the same call as ``nfcli vae``) in its own worker process
on one thread, writing OUTPUT/K<k>/; then OUTPUT/summary.csv and OUTPUT/nll.png as
``nfcli vae --K list`` writes them. Prints the command, the commit and a Markdown table: −ln p(x)
by importance sampling (--samples per test image, on all 10,000 test images unless
--test-images), its standard error, −ELBO, training time, and whether each flow beats the
diagonal Gaussian (K = 0) by more than twice the standard error of the difference (the two
estimates are on the same test images, so the paired differences' spread is used).
"""

from __future__ import annotations

import argparse
import functools
import math
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from provenance import nfcli_commit

from nfcli.vae.data import load_images
from nfcli.vae.run import TableRow, run_vae, write_table
from nfcli.vae.train import VaeConfig, with_budget


def one(data: str, config: VaeConfig, folder: str, samples: int, images: int | None):
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = run_vae(
        load_images(data, config.seed),
        config,
        folder,
        True,
        samples=samples,
        test_images=images,
        data_spec=data,
    )
    ck = run.checkpoint
    return (
        config.K,
        ck.evaluation,
        ck.history.valid_elbo[-1],
        ck.history.seconds[-1],
        time.perf_counter() - t0,
    )


@functools.cache
def _test_log_likelihoods(
    path: Path, samples: int, images: int | None, data: str, seed: int
) -> torch.Tensor:
    """ln p(x) of each test image under the model in ``path`` (as ``evaluate`` estimates it: the
    same binarisation and seed), float64 (N,)."""
    from nfcli.checkpoint import load_vae_checkpoint
    from nfcli.vae.data import binarize
    from nfcli.vae.train import _generator

    test = load_images(data, seed).test
    test = test[:images] if images is not None else test
    x = binarize(test, _generator(seed, -2))  # the binarisation ``evaluate`` used
    model = load_vae_checkpoint(path / "model.pt").model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = [model.log_likelihood(x[i : i + 100], samples) for i in range(0, len(x), 100)]
    return torch.cat(parts).double()


def paired_se(a: Path, b: Path, samples: int, images: int | None, data: str, seed: int) -> float:
    """The standard error of mean(ln p_a(x) − ln p_b(x)) over the same test images."""
    d = _test_log_likelihoods(a, samples, images, data, seed) - _test_log_likelihoods(
        b, samples, images, data, seed
    )
    return float(d.std() / math.sqrt(len(d)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--K", default="0,10,20,40,80")
    ap.add_argument("--flow", default="planar")
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--updates", type=int)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--test-images", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("-o", "--output", default="runs/bench-vae")
    args = ap.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(
        f"nfcli commit {nfcli_commit()}; torch {torch.__version__}; one thread per model, "
        f"{args.jobs} at a time\n",
        flush=True,
    )
    cfg = with_budget(VaeConfig(flow=args.flow, seed=args.seed), args.budget)
    if args.updates:
        cfg = replace(cfg, updates=args.updates)
    ks = [int(k) for k in args.K.split(",")]
    out = Path(args.output)
    with ProcessPoolExecutor(args.jobs) as pool:
        # the longest (largest K) first, so that two workers finish close together
        futures = {
            k: pool.submit(
                one,
                args.data,
                replace(cfg, K=k),
                str(out / f"K{k}"),
                args.samples,
                args.test_images,
            )
            for k in sorted(ks, reverse=True)
        }
        results = [futures[k].result() for k in ks]
    rows = [TableRow(k, out / f"K{k}", ev, valid, secs) for k, ev, valid, secs, _ in results]
    write_table(rows, out, args.data, cfg)
    base = next((r for r in results if r[0] == 0), None)
    print("| K | test −ln p(x) (± s.e.) | −ELBO | valid bound | train | vs K = 0 (± s.e.) |")
    print("|---|---|---|---|---|---|")
    for k, ev, valid, secs, _ in results:
        vs = ""
        if base is not None and k != 0:
            se = paired_se(
                out / f"K{k}", out / "K0", args.samples, args.test_images, args.data, args.seed
            )
            gain = base[1].nll - ev.nll
            verdict = "beats" if gain > 2 * se else "worse" if gain < -2 * se else "within 2 s.e."
            vs = f"{gain:+.2f} ± {se:.2f} ({verdict})"
        print(
            f"| {k} | {ev.nll:.2f} ± {ev.nll_se:.2f} | {ev.neg_elbo:.2f} | {valid:.2f} | "
            f"{secs / 60:.1f} min | {vs} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
