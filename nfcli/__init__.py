"""nfcli: fit normalizing flows (planar, radial, coupling) to a density known up to a constant.

from nfcli import load_energy, fit, FitConfig
energy = load_energy("0.5*((sqrt(x**2 + y**2) - 2)/0.4)**2")
result = fit(energy, FitConfig(K=16))
samples = result.flow.sample(10_000)
"""

__version__ = "0.1.0"

import gc

# Importing torch, sympy and matplotlib (below) makes some 260,000 objects that live as long as
# the process. Python's cyclic garbage collector would scan them all, again and again: 4 full
# passes during these imports (a quarter of their time, one thread, freeing some 60 objects).
# So it is paused for the imports (and left as it was). The command (``nfcli.launch``) also
# pauses it while importing the command line, then leaves all of them out of later scans; a
# library user's process is not frozen.
_collecting = gc.isenabled()
gc.disable()
try:
    from nfcli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from nfcli.compare import run_compare
    from nfcli.config import FitConfig, extend
    from nfcli.diagnostics import (
        importance_sampling,
        log_prob,
        pareto_khat,
        quadrature,
        resample,
    )
    from nfcli.energy import Energy, load_energy
    from nfcli.errors import NfcliError
    from nfcli.expr import parse
    from nfcli.figures import FigureOptions, write_figures
    from nfcli.flows import Flow, planar, radial
    from nfcli.report import TrustReport
    from nfcli.run import run_fit
    from nfcli.signals import stop_on_signals
    from nfcli.summary import Summary, VariableSummary, summarise, summarise_flow
    from nfcli.train import FitResult, TrainingState, fit
finally:
    if _collecting:
        gc.enable()

__all__ = [
    "Checkpoint",
    "Energy",
    "FigureOptions",
    "FitConfig",
    "FitResult",
    "Flow",
    "NfcliError",
    "Summary",
    "TrainingState",
    "TrustReport",
    "VariableSummary",
    "extend",
    "fit",
    "importance_sampling",
    "load_checkpoint",
    "load_energy",
    "log_prob",
    "pareto_khat",
    "parse",
    "planar",
    "quadrature",
    "radial",
    "resample",
    "run_compare",
    "run_fit",
    "save_checkpoint",
    "stop_on_signals",
    "summarise",
    "summarise_flow",
    "write_figures",
]
