"""Reference moments of the sampling suite's logistic regressions, from the benchmark's own
ground-truth draws (Blessing et al. 2024; ../shared/data/sampling-suite/), made without nfcli.

    python benchmarks/suite_reference.py [--data ../shared/data/sampling-suite]

Writes benchmarks/suite/reference/{german_credit,breast_cancer}.json: per coordinate the mean and
sd of the draws, the draws' count and, per mean, its Monte-Carlo error in sds (1/√n: the draws are
independent). Before that, two checks that the draws are of the posteriors in benchmarks/suite/:
breast cancer's stored ln p must equal −U up to a constant (to 1e-9); for German credit, which
stores no ln p, the mean of ∇U over the draws must be 0 within 4 standard errors in every
coordinate (E_p[∇U] = 0, a Stein identity).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from nfcli import load_energy

HERE = Path(__file__).parent
SUITE = HERE / "suite"


def check_lns(name: str, draws: np.ndarray, lns: np.ndarray) -> float:
    u = load_energy(str(SUITE / f"{name}.py"))(torch.as_tensor(draws)).numpy()
    spread = float(np.std(-u - lns))
    if spread > 1e-9:
        raise SystemExit(
            f"{name}: the draws' ln p differ from −U by more than a constant ({spread})"
        )
    return spread


def check_stein(name: str, draws: np.ndarray) -> float:
    z = torch.as_tensor(draws).requires_grad_(True)
    load_energy(str(SUITE / f"{name}.py"))(z).sum().backward()
    g = z.grad.numpy()
    worst = float(np.max(np.abs(g.mean(0)) / (g.std(0) / np.sqrt(len(g)))))
    if worst > 4:
        raise SystemExit(f"{name}: E[∇U] over the draws is {worst:.1f} standard errors from 0")
    return worst


def write(name: str, draws: np.ndarray, check: dict) -> None:
    names = list(load_energy(str(SUITE / f"{name}.py")).names)
    ref = {
        "name": name,
        "dim": draws.shape[1],
        "names": names,
        "mean": draws.mean(0).tolist(),
        "sd": draws.std(0, ddof=1).tolist(),
        "method": "ground-truth draws of the benchmark (Blessing et al. 2024)",
        "draws": len(draws),
        "max_mcse_mean_in_sd": 1 / np.sqrt(len(draws)),
        "check": check,
    }
    path = SUITE / "reference" / f"{name}.json"
    path.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{path}: {len(draws)} draws, check {check}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/sampling-suite")
    args = ap.parse_args()
    credit = np.load(args.data / "german_credit10k.npy")
    write("german_credit", credit, {"stein_max_z": check_stein("german_credit", credit)})
    cancer = np.load(args.data / "breastcancer_gt_with_lns_10k.npz")
    gt, lns = cancer["groundtruth"], cancer["groundtruth_lns"]
    write("breast_cancer", gt, {"lnp_minus_u_sd": check_lns("breast_cancer", gt, lns)})


if __name__ == "__main__":
    main()
