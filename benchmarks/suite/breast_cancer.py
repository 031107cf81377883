"""Breast cancer (the sampling suite of Blessing et al. 2024): a 31-D logistic regression on 569
tumours (Wisconsin diagnostic breast cancer, UCI, CC BY 4.0; data/README.md).

Features: columns 3–32 of breast_cancer.data, each divided by its population sd, a column of ones
first; y = column 2 ∈ {0, 1}; p(y = 1) = σ(−xᵀβ); prior β ~ N(0, 10² I). U = −Σ ln p(y_i | β) +
‖β‖²/200. Reference moments: reference/breast_cancer.json (the benchmark's 10,080 draws, whose
stored ln p equal −U up to a constant: benchmarks/suite_reference.py checks it).
"""

import runpy
from pathlib import Path

import numpy as np

_shared = runpy.run_path(str(Path(__file__).with_name("_logistic.py")))
_raw = np.loadtxt(_shared["DATA"] / "breast_cancer.data")
X = _shared["design"](_raw[:, 2:])
Y = _raw[:, 1]
NAMES = ["intercept"] + [f"beta_{j}" for j in range(1, 31)]


def energy(z):
    return _shared["negative_log_likelihood"](z, X, Y) + (z**2).sum(-1) / 200
