"""Two well separated modes in 6-D: ½ N(−2·1, I) + ½ N(2·1, I) (modes 9.8 apart).

U = −ln(½ e^{−‖z − μ‖²/2} + ½ e^{−‖z + μ‖²/2}), so ln Z = (D/2) ln 2π exactly. A fit that keeps one
mode has KL(q‖p) ≥ ln 2 ≈ 0.69.
"""

import math

import torch

DIM = 6
LOG_Z = 0.5 * DIM * math.log(2 * math.pi)


def energy(z: torch.Tensor) -> torch.Tensor:
    a = -0.5 * ((z - 2.0) ** 2).sum(-1)
    b = -0.5 * ((z + 2.0) ** 2).sum(-1)
    return -(torch.logaddexp(a, b) - math.log(2))
