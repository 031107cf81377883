"""A family of targets with two conditions: a banana whose curvature b and noise sd s vary.

    x ~ N(0, 1),    y | x ~ N(b·(x² − 1), s²)

so p(x, y | b, s) = N(x; 0, 1) · N(y; b(x² − 1), s²), normalised for every (b, s): ln Z = 0 as
written below (the energy includes ln(2π s)), which makes the ELBO at each condition a direct
measure of KL(q‖p) = −ELBO. One conditional fit covers the whole rectangle of (b, s):

    nfcli fit examples/banana_family.py --condition b=0:2 --condition s=0.3:1 -o runs/banana
    nfcli report runs/banana/model.pt --trust --at b=0:2:3,s=0.3:1:3   # the 3 × 3 grid
    nfcli plot runs/banana/model.pt --trust --at b=0:2:5,s=0.3          # 5 curvatures at s = 0.3
    nfcli sample runs/banana/model.pt -n 10000 --at b=1.5,s=0.5 -o banana.npy
"""

import math

import torch

NAMES = ["x", "y"]
CONDITION = ["b", "s"]


def energy(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    x, y = z[:, 0], z[:, 1]
    b, s = c[:, 0], c[:, 1]
    return 0.5 * x**2 + 0.5 * ((y - b * (x**2 - 1)) / s) ** 2 + torch.log(2 * math.pi * s)
