"""Exact samples: Markov chains whose draws are p's, whatever q's errors (``nfcli mcmc``, and the
chains a fit runs for its draws where its verdict is not good).

    kernels.py   the transition kernels, batched over chains: random-walk MH, HMC with dual
                 averaging, independence MH with q as the proposal, NeuTra (HMC in the flow's
                 base space); ``Chains``, ``Watch``
    chains.py    which kernel (``default_method``, ``draws_sampler``), the chains' settings and
                 starts, a run (``run_mcmc``) with its R-hat/ESS summary, and the draws file

``from nfcli.mcmc import McmcSettings, run_mcmc`` gives the library's calls."""

from nfcli.mcmc.chains import METHODS, McmcRun, McmcSettings, default_method, run_mcmc
from nfcli.mcmc.kernels import Chains, Watch

__all__ = ["METHODS", "Chains", "McmcRun", "McmcSettings", "Watch", "default_method", "run_mcmc"]
