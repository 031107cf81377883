"""How far to trust a set of MCMC chains: split R-hat, bulk and tail ESS and the Monte-Carlo
error of each variable's mean (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, "Rank-
normalization, folding, and localization: an improved R-hat for assessing convergence of MCMC").

The numbers come from arviz-stats (the ArviZ project's array implementation, the reference one
that Stan and PyMC users read), not from code of our own: R-hat is the rank-normalised split
R-hat (max of the bulk and the folded one), ESS bulk is the rank-normalised split ESS, ESS tail the
smaller of the ESS of the 5% and 95% quantiles' indicators, MCSE the Monte-Carlo standard error of
the mean. arviz-stats imports scipy (~0.5 s), so it is imported here only when a diagnostic is
computed, never by ``nfcli fit``.

R-hat < 1.01 and ESS above ~100 per chain are Vehtari et al.'s thresholds for trusting the
chains' summaries; ``worries`` says in words which are not met.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

RHAT_OK = 1.01  # Vehtari et al. 2021, §4: trust only chains with R-hat below this
ESS_PER_CHAIN_OK = 100  # … and with bulk and tail ESS above 100 per chain
TAIL_PROB = 0.05  # ESS tail: of the 5% and 95% quantiles


@dataclass
class VariableConvergence:
    """One variable's summary over all chains: mean and sd of the draws, the Monte-Carlo standard
    error of the mean, split R-hat and the bulk and tail effective sample sizes."""

    name: str
    mean: float
    sd: float
    mcse_mean: float
    rhat: float
    ess_bulk: float
    ess_tail: float


def convergence(draws: Tensor, names: Sequence[str]) -> list[VariableConvergence]:
    """Each variable's summary from ``draws`` of shape (C, N, D) (C chains of N draws); NaN where
    arviz-stats cannot tell (fewer than 4 draws per chain, or a constant variable)."""
    from arviz_stats.base import array_stats  # imports scipy: only when needed

    x = draws.detach().cpu().double().numpy()
    C, N, D = x.shape
    if N < 4:  # arviz-stats' minimum: no diagnostic from fewer draws
        nan = [math.nan] * D
        rhat = ess_bulk = ess_tail = mcse = np.array(nan)
    else:
        axes = dict(chain_axis=0, draw_axis=1)
        rhat = array_stats.rhat(x, method="rank", **axes)
        ess_bulk = array_stats.ess(x, method="bulk", **axes)
        ess_tail = array_stats.ess(x, method="tail", prob=TAIL_PROB, **axes)
        mcse = array_stats.mcse(x, method="mean", **axes)
    flat = x.reshape(C * N, D)
    sd = flat.std(0, ddof=1) if C * N > 1 else np.full(D, math.nan)
    return [
        VariableConvergence(
            names[d],
            float(flat[:, d].mean()) if C * N else math.nan,
            float(sd[d]),
            float(mcse[d]),
            float(rhat[d]),
            float(ess_bulk[d]),
            float(ess_tail[d]),
        )
        for d in range(D)
    ]


def worries(variables: Sequence[VariableConvergence], chains: int) -> list[str]:
    """In words, which of Vehtari et al.'s conditions the chains fail: R-hat ≥ 1.01 (the chains
    disagree: not mixed, or a mode some chains never left), bulk or tail ESS below 100 per chain
    (too few independent draws for the summaries). Empty where every variable passes."""
    out = []
    bad_rhat = [v for v in variables if not v.rhat < RHAT_OK]
    if bad_rhat:
        worst = max(bad_rhat, key=lambda v: v.rhat if math.isfinite(v.rhat) else math.inf)
        out.append(
            f"R-hat ≥ {RHAT_OK} for {_names(bad_rhat)} (worst {worst.rhat:.3f}, {worst.name}): "
            "the chains disagree, so they have not mixed or some never left a mode; run longer "
            "(--draws, --warmup) or with a better sampler before using the draws."
        )
    need = ESS_PER_CHAIN_OK * chains
    low = [v for v in variables if not min(v.ess_bulk, v.ess_tail) >= need]
    if low:
        worst = min(low, key=lambda v: min(v.ess_bulk, v.ess_tail))
        out.append(
            f"ESS below {need} ({ESS_PER_CHAIN_OK} per chain) for {_names(low)} (lowest "
            f"{min(worst.ess_bulk, worst.ess_tail):.0f}, {worst.name}): the means and quantiles "
            "are noisy; run longer (--draws)."
        )
    return out


def _names(variables: Sequence[VariableConvergence], shown: int = 4) -> str:
    names = [v.name for v in variables]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
