"""What the lost-mode search (``nfcli.lost_modes.search_modes``) finds, and what it costs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mode_search.py              # both tables
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mode_search.py --skip-posteriors

Table 1, the issue's case: an equal mixture of N(c, I) in 4-D with c = 0, 10·e1, 10·e2, fitted
with nfcli.train.fit (2 planar layers for 300 steps; the defaults, which start from the mode;
with 8 restarts; with 8 restarts from the origin, annealed) and evaluated with
nfcli.run.evaluate: the fit's seconds, the evaluation's, the search's (part of the evaluation),
k̂ and ESS over the sets of draws, the modes found and lost, and the verdict.

Table 2, the search alone on the posteriors of benchmarks/posteriors/ and the targets of
benchmarks/targets/ (and examples/banana4d.py), with q stood in for by draws of its best
Gaussian: N(mean, sd²) per coordinate from the reference file (the mixture of the modes for the
multimodal targets), so its seconds are those of a search after a fit; what a fit costs is in the
README ("Real posteriors"). A search that calls a mode lost here is a false alarm only where q
has every mode, which these draws do.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from provenance import nfcli_commit

from nfcli.diagnostics import verdict
from nfcli.energy import load_energy
from nfcli.lost_modes import MIN_P_SHARE, search_modes
from nfcli.run import evaluate
from nfcli.train import FitConfig, fit

HERE = Path(__file__).parent
CENTRES = [(0, 0, 0, 0), (10, 0, 0, 0), (0, 10, 0, 0)]
DRAWS = 100_000


def three_modes() -> str:
    terms = (
        "exp(-0.5*(" + "+".join(f"(x{i + 1}-({c}))**2" for i, c in enumerate(cs)) + "))"
        for cs in CENTRES
    )
    return f"-log({' + '.join(terms)})"


def worst_ratio(search) -> str:
    """The lowest q share / p share over the modes with at least MIN_P_SHARE of p's mass: what
    ``FoundMode.lost`` compares with LOST_RATIO."""
    ratios = [m.q_share / m.p_share for m in search.modes if m.p_share >= MIN_P_SHARE]
    return f"{min(ratios):.2f}" if ratios else "—"


def issue_table() -> None:
    energy = load_energy(three_modes())
    print("| settings | fit s | evaluate s | search s | search / fit | k̂ | ESS | modes | lost "
          "| worst q/p | verdict |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, config in [
        ("planar, K = 2, 300 steps", FitConfig(K=2, flow="planar", iters=300)),
        ("defaults", FitConfig()),
        ("defaults, --restarts 8", FitConfig(restarts=8)),
        ("defaults, --start origin --restarts 8", FitConfig(start="origin", restarts=8)),
    ]:
        t0 = time.perf_counter()
        result = fit(energy, config)
        fit_s = time.perf_counter() - t0
        flow = result.flow.to("cpu").eval()
        t0 = time.perf_counter()
        r = evaluate(flow, energy, flow.sample(1000))
        eval_s = time.perf_counter() - t0
        r.vars, r.start = list(energy.names), result.config.start
        level, _ = verdict(r)
        s = r.mode_search
        k, e = r.khat_replicates, r.ess_fraction_replicates
        print(
            f"| {label} | {fit_s:.1f} | {eval_s:.2f} | {s.seconds:.2f} | "
            f"{s.seconds / fit_s:.1%} | {min(k):.2f}–{max(k):.2f} | {min(e):.0%}–{max(e):.0%} | "
            f"{len(s.modes)} | {len(s.lost)} | {worst_ratio(s)} | {level} |"
        )


def proxy_draws(path: Path, energy, g: torch.Generator) -> torch.Tensor:
    """q's stand-in: N(mean, sd²) from the posterior's reference; each target's own mixture."""
    z = torch.randn(DRAWS, energy.dim, generator=g)
    reference = HERE / "posteriors" / "reference" / f"{path.stem}.json"
    if reference.exists():
        ref = json.loads(reference.read_text())
        return torch.tensor(ref["mean"]) + torch.tensor(ref["sd"]) * z
    if path.stem == "mixture6":  # ½ N(−2·1, I) + ½ N(2·1, I)
        return z + torch.where(torch.rand(DRAWS, 1, generator=g) < 0.5, -2.0, 2.0)
    if path.stem == "banana4d":
        x1, x3 = 1.5 * z[:, 0], torch.where(torch.rand(DRAWS, generator=g) < 0.5, -2.0, 2.0)
        x3 = x3 + 0.5 * z[:, 2]
        return torch.stack([x1, x1**2 / 2 + 0.5 * z[:, 1], x3, x3 / 2 + 0.7 * z[:, 3]], -1)
    return z  # gauss8, student5, funnel10: centred at 0 with unit scales (near enough)


def posterior_table() -> None:
    paths = sorted((HERE / "posteriors").glob("[!_]*.py")) + sorted((HERE / "targets").glob("*.py"))
    paths.append(HERE.parent / "examples" / "banana4d.py")
    print("| target | D | search s | modes | lost | worst q/p | no proper minimum | p's shares |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        energy = load_energy(str(path))
        z = proxy_draws(path, energy, torch.Generator().manual_seed(0))
        s = search_modes(energy, z)
        shares = ", ".join(f"{m.p_share:.2g}" for m in s.modes[:4])
        print(
            f"| {path.stem} | {energy.dim} | {s.seconds:.2f} | {len(s.modes)} | {len(s.lost)} | "
            f"{worst_ratio(s)} | "
            f"{s.not_minima} of {s.starts} | {shares} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-issue", action="store_true")
    parser.add_argument("--skip-posteriors", action="store_true")
    args = parser.parse_args()
    print(f"nfcli {nfcli_commit()}, {torch.get_num_threads()} thread(s)\n")
    if not args.skip_issue:
        issue_table()
        print()
    if not args.skip_posteriors:
        posterior_table()


if __name__ == "__main__":
    main()
