"""Neal's funnel in 2-D, as a Python-file energy for nfcli.

    nfcli fit examples/funnel.py --K 32 --flow radial

A Python file states its dimension with DIM (or with NAMES, one name per column, which also labels
axes and CSV columns) and defines energy(z): a torch tensor of shape (N, D) in, the N energies
U(z) out, p(z) ∝ exp(−U(z)). It must be differentiable with torch operations. nfcli runs this file:
it is your code.

Here v ~ N(0, 3²) and x | v ~ N(0, e^v), so −ln p(v, x) = v²/18 + x²e^{−v}/2 + v/2 + ln(6π) and,
with U as below, ln Z = ln(6π) ≈ 2.9365 exactly. The funnel's neck is a classic hard case for
simple flows: expect a visible KL.
"""

import math

import torch

NAMES = ["v", "x"]  # implies DIM = 2
LOG_Z = math.log(6 * math.pi)


def energy(z: torch.Tensor) -> torch.Tensor:
    v, x = z[:, 0], z[:, 1]
    return v**2 / 18 + 0.5 * x**2 * torch.exp(-v) + 0.5 * v
