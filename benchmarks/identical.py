"""Behaviour unchanged, checked: fixed-seed fits whose every output is hashed, so that a change
meant to move code and not behaviour (issue 29's redesign) can show it left them bit-identical.

    python benchmarks/identical.py --write runs/identical.json   # before the change
    python benchmarks/identical.py --check runs/identical.json   # after it: exit 1 on a difference

Each case is ``nfcli.run.run_fit`` into a temporary folder (short fits: the point is the bits,
not the quality), and its digest holds a SHA-256 of

    losses      the checkpoint's loss histories (β = 1 and annealed), as float64 bytes
    parameters  every tensor of the flow's state_dict, in order, with its name and shape
    samples     samples.npy as written (q's draws, or the chains' after a fit that is not good)
    metrics     metrics.json with the keys that measure time (seconds, wall time, it/s, the
                share of time in U) removed, as sorted JSON

and a short VAE fit (``vae-planar``) hashes its parameters, its history less its times, and its
test evaluation. One thread (torch.set_num_threads(1)): a sum over two threads can round
differently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from nfcli import FitConfig, load_energy
from nfcli.checkpoint import load_checkpoint
from nfcli.run import run_fit

HERE = Path(__file__).parent
FUNNEL10 = str(HERE / "targets" / "funnel10.py")
CASES = {  # name: (target, FitConfig settings)
    "u1-planar": ("u1", {"flow": "planar", "K": 8, "iters": 300}),
    "u2-radial": ("u2", {"flow": "radial", "K": 8, "iters": 300}),
    "u3-realnvp": ("u3", {"flow": "realnvp", "K": 4, "iters": 300}),
    "u4-spline": ("u4", {"flow": "spline", "K": 2, "iters": 200}),
    "u1-planar-restarts": ("u1", {"flow": "planar", "K": 8, "iters": 300, "restarts": 3}),
    "funnel10-realnvp": (FUNNEL10, {"iters": 300}),  # 10-D defaults: from the mode, chains
    "funnel10-planar": (FUNNEL10, {"flow": "planar", "K": 8, "iters": 300}),
    "funnel10-spline-restarts": (
        FUNNEL10,
        {"flow": "spline", "K": 2, "iters": 200, "restarts": 2, "start": "origin"},
    ),
}
VAE_CASE = "vae-planar"  # fit_vae on the generated images: the model and its history
TIMING = ("seconds", "wall_time_s", "iters_per_s", "energy_share", "time")


def scrub(value):
    """``value`` (metrics.json's) without the keys that measure time, at any depth."""
    if isinstance(value, dict):
        return {
            k: scrub(v)
            for k, v in value.items()
            if not any(k == t or k.endswith(f"_{t}") or k.startswith(f"{t}_") for t in TIMING)
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vae_digest() -> dict[str, str]:
    """A short VAE fit (K = 2 planar, 60 updates) on the generated images, and its evaluation."""
    from nfcli.vae.data import fixture
    from nfcli.vae.train import VaeConfig, evaluate, fit_vae

    data = fixture()
    config = VaeConfig(K=2, latent=2, hidden=(16,), batch=50, updates=60)
    result = fit_vae(data, config)
    h = hashlib.sha256()
    for key, tensor in result.model.state_dict().items():
        h.update(f"{key}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().double().numpy().tobytes())
    history = result.history.to_dict()
    history.pop("seconds", None)
    ev = evaluate(result.model, data.test[:50], samples=10).to_dict()
    ev = scrub(ev)
    return {
        "parameters": h.hexdigest(),
        "history": sha(json.dumps(history, sort_keys=True).encode()),
        "evaluation": sha(json.dumps(ev, sort_keys=True).encode()),
    }


def digest(name: str) -> dict[str, str]:
    if name == VAE_CASE:
        return vae_digest()
    target, settings = CASES[name]
    energy = load_energy(target)
    with tempfile.TemporaryDirectory() as out:
        run_fit(energy, FitConfig(threads=1, **settings), out)
        ckpt = load_checkpoint(Path(out) / "model.pt")
        losses = b"".join(ckpt.history[k].double().numpy().tobytes() for k in sorted(ckpt.history))
        h = hashlib.sha256()
        for key, tensor in ckpt.flow.state_dict().items():
            h.update(f"{key}{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().cpu().double().numpy().tobytes())
        samples = np.load(Path(out) / "samples.npy").tobytes()
        metrics = json.loads((Path(out) / "metrics.json").read_text())
        return {
            "losses": sha(losses),
            "parameters": h.hexdigest(),
            "samples": sha(samples),
            "metrics": sha(json.dumps(scrub(metrics), sort_keys=True).encode()),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="write the digests to this JSON file")
    group.add_argument("--check", type=Path, help="compare with the digests in this JSON file")
    ap.add_argument("--only", help="comma-separated case names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.only.split(",") if args.only else [*CASES, VAE_CASE]
    found = {}
    for name in names:
        found[name] = digest(name)
        print(f"{name}: " + ", ".join(f"{k} {v[:12]}" for k, v in found[name].items()), flush=True)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(found, indent=2) + "\n")
        print(f"wrote {args.write}")
        return 0
    before = json.loads(args.check.read_text())
    differ = [
        f"{name} {part}"
        for name in names
        for part in found[name]
        if before.get(name, {}).get(part) != found[name][part]
    ]
    print("identical" if not differ else "DIFFERENT: " + "; ".join(differ))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
