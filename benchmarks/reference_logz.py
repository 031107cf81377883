"""Recompute the built-in targets' reference ln Z by fine grid quadrature (float64).

    .venv/bin/python benchmarks/reference_logz.py

Prints, for grid sizes n = 1000, 2000, 4000 over (−8, 8)², ln Z and the value stored in
nfcli/targets.py; the stored values are these numbers rounded to 4 decimals (closed form for ring8).
"""

from nfcli.diagnostics import quadrature
from nfcli.energy import load_energy
from nfcli.targets import TARGETS

if __name__ == "__main__":
    print("| target | n = 1000 | n = 2000 | n = 4000 | stored |")
    print("|---|---|---|---|---|")
    for name, t in TARGETS.items():
        energy = load_energy(name)
        values = [
            quadrature(energy, ((-8.0, 8.0), (-8.0, 8.0)), n).log_z for n in (1000, 2000, 4000)
        ]
        print(f"| {name} | " + " | ".join(f"{v:.6f}" for v in values) + f" | {t.log_z:.4f} |")
