"""Many-well in 32-D (Midgley et al. 2023; Blessing et al. 2024): 16 independent copies of the
2-D double well U(d, v) = d⁴ − 6d² − ½d + ½v², in coordinates (d_1, v_1, …, d_16, v_16).

Each copy's mass is ∫ e^{−(d⁴ − 6d² − d/2)} dd · √(2π), so ln Z = 16·(ln I + ½ ln 2π) with
I = ∫ e^{−(d⁴ − 6d² − d/2)} dd = 11784.50927 (quadrature: ``one_well``); the side d > 0 holds
RIGHT_SHARE = 0.844 of each copy's mass. p has 2¹⁶ modes: every sign pattern of the d's.
"""

import math

import numpy as np
import torch

WELLS = 16
NAMES = [f"{c}{k}" for k in range(1, WELLS + 1) for c in ("d", "v")]


def one_well() -> tuple[float, float]:
    """(ln I, the share of d > 0) by the trapezoid rule on [−6, 6] (the integrand is below
    e^{−500} beyond)."""
    d = np.linspace(-6.0, 6.0, 1_200_001)
    f = np.exp(-(d**4 - 6 * d**2 - 0.5 * d))
    total = np.trapezoid(f, d)
    right = np.trapezoid(np.where(d > 0, f, 0.0), d)
    return math.log(total), right / total


_LOG_I, RIGHT_SHARE = one_well()
LOG_Z = WELLS * (_LOG_I + 0.5 * math.log(2 * math.pi))


def energy(z: torch.Tensor) -> torch.Tensor:
    d, v = z[:, 0::2], z[:, 1::2]
    return (d**4 - 6 * d**2 - 0.5 * d + 0.5 * v**2).sum(-1)
