"""German credit (the sampling suite of Blessing et al. 2024): a 25-D logistic regression with a
flat prior on 1,000 loans (Statlog German credit, UCI, CC BY 4.0; data/README.md).

Features: the 24 numeric columns of german.data-numeric, each divided by its population sd, a
column of ones first; y = last column − 1 ∈ {0, 1}; p(y = 1) = σ(−xᵀβ). U = −Σ ln p(y_i | β)
(the benchmark's code leaves its N(0, 10²) prior out; its ground-truth draws are of this flat-prior
posterior). Reference moments: reference/german_credit.json (the benchmark's 10,000 draws).
"""

import runpy
from pathlib import Path

import numpy as np

_shared = runpy.run_path(str(Path(__file__).with_name("_logistic.py")))
_raw = np.loadtxt(_shared["DATA"] / "german.data-numeric")
X = _shared["design"](_raw[:, :-1])
Y = _raw[:, -1] - 1
NAMES = ["intercept"] + [f"beta_{j}" for j in range(1, 25)]


def energy(z):
    return _shared["negative_log_likelihood"](z, X, Y)
