"""The sampling suite's logistic regressions (Blessing et al. 2024), shared by german_credit.py
and breast_cancer.py: every feature column divided by its population standard deviation (not
centred), a column of ones prepended, and p(y = 1 | x) = σ(−xᵀβ), as the benchmark's code defines
them (../shared/data/sampling-suite/README.md). Not an energy file (leading underscore)."""

from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).with_name("data")


def design(features: np.ndarray) -> np.ndarray:
    """Columns divided by their population sd, with a column of ones first."""
    x = features / features.std(0)
    return np.column_stack([np.ones(len(x)), x])


def negative_log_likelihood(z: torch.Tensor, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """−Σ ln p(y_i | x_i, β) for each row β of z (N, D): with s = −xᵀβ,
    ln p(y = 1) = ln σ(s) and ln p(y = 0) = ln σ(−s)."""
    xt = torch.as_tensor(x, dtype=z.dtype)
    yt = torch.as_tensor(y, dtype=z.dtype)
    s = -z @ xt.T  # (N, n)
    return -(
        yt * torch.nn.functional.logsigmoid(s) + (1 - yt) * torch.nn.functional.logsigmoid(-s)
    ).sum(-1)
