"""Log-Gaussian Cox process on the Finnish pines (1,600-D; Møller, Syversveen & Waagepetersen
1998; the sampling suite of Blessing et al. 2024). data/README.md has the data's source.

The 126 saplings are counted on a 40 × 40 grid over the unit square, y_i for cell i. The latent
field x has a Gaussian prior with constant mean μ = ln 126 − 1.91/2 and covariance
K(m, n) = 1.91·exp(−‖m − n‖/(40/33)) between the cells' grid indices m, n, and y_i ~
Poisson(a·exp(x_i)), a = 1/1600 the cell's area. Written in whitened coordinates w (x = μ + Lw,
LLᵀ = K), as the suite's papers commonly fit it:

    U(w) = ½‖w‖² + Σ_i [a·exp(x_i) − y_i x_i] + const,

which leaves Z unchanged (the prior's Jacobian is absorbed in N(w; 0, I)); the constant drops the
Poisson terms ln y_i! and y_i ln a and the prior's ½·1600·ln 2π, so ln Z here is the marginal
likelihood's up to those. No ground truth: the benchmark reports nfcli's ln Z, ESS and time.
"""

import math
from pathlib import Path

import numpy as np
import torch

GRID = 40
_pines = np.loadtxt(
    Path(__file__).with_name("data") / "pines.csv", delimiter=",", skiprows=1, usecols=(1, 2)
)
_cells = np.clip((_pines * GRID).astype(int), 0, GRID - 1)
COUNTS = np.zeros((GRID, GRID))
np.add.at(COUNTS, (_cells[:, 0], _cells[:, 1]), 1)
COUNTS = COUNTS.reshape(-1)
_idx = np.stack(np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij"), -1).reshape(-1, 2)
_dist = np.sqrt(((_idx[:, None, :] - _idx[None, :, :]) ** 2).sum(-1))
COVARIANCE = 1.91 * np.exp(-_dist / (GRID / 33))
CHOL = np.linalg.cholesky(COVARIANCE)
MEAN = math.log(126) - 1.91 / 2
AREA = 1 / GRID**2
NAMES = [f"w{i}" for i in range(GRID * GRID)]
_L = {}


def energy(w: torch.Tensor) -> torch.Tensor:
    key = (w.dtype, w.device)
    if key not in _L:
        _L[key] = torch.as_tensor(CHOL.T, dtype=w.dtype, device=w.device)
    x = MEAN + w @ _L[key]
    y = torch.as_tensor(COUNTS, dtype=w.dtype, device=w.device)
    return 0.5 * (w * w).sum(-1) + (AREA * torch.exp(x) - y * x).sum(-1)
