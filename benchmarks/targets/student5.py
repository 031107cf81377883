"""Five independent Student-t variables, ν = 4: heavy (polynomial) tails in every direction.

U = Σ (ν + 1)/2 · ln(1 + x_i²/ν), so ln Z = D·[ln Γ(ν/2) + ½ ln(νπ) − ln Γ((ν + 1)/2)] exactly.
"""

import math

import torch

DIM, NU = 5, 4.0
LOG_Z = DIM * (math.lgamma(NU / 2) + 0.5 * math.log(NU * math.pi) - math.lgamma((NU + 1) / 2))


def energy(z: torch.Tensor) -> torch.Tensor:
    return ((NU + 1) / 2 * torch.log1p(z**2 / NU)).sum(-1)
