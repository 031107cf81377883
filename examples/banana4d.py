"""A 4-D target with a banana, two modes and a correlation, to show pairs.png.

    x1 ~ N(0, 1.5²)                     x2 | x1 ~ N(x1²/2, 0.5²)      (a banana in x1, x2)
    x3 ~ ½N(−2, 0.5²) + ½N(2, 0.5²)     x4 | x3 ~ N(x3/2, 0.7²)       (two modes, correlated)

Its normalising constant is known: ln Z = 2 ln 2π + ln(1.5 · 0.5 · 2 · 0.5 · 0.7) ≈ 3.0314, so
the ln Z that nfcli estimates by importance sampling can be checked against it.

    nfcli fit examples/banana4d.py -o runs/banana4d
"""

import math

import torch

NAMES = ["x1", "x2", "x3", "x4"]
LOG_Z = 2 * math.log(2 * math.pi) + math.log(1.5 * 0.5 * 2 * 0.5 * 0.7)


def energy(z: torch.Tensor) -> torch.Tensor:
    x1, x2, x3, x4 = z.unbind(-1)
    modes = torch.stack([-((x3 - 2) ** 2), -((x3 + 2) ** 2)]) / (2 * 0.5**2)
    return (
        x1**2 / (2 * 1.5**2)
        + (x2 - x1**2 / 2) ** 2 / (2 * 0.5**2)
        - torch.logsumexp(modes, 0)
        + (x4 - x3 / 2) ** 2 / (2 * 0.7**2)
    )
