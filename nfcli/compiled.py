"""A compiled energy for the training loop: torch.compile where it pays, the eager U otherwise.

A user's energy written as a Python loop (a likelihood over time steps, say) costs hundreds of
small torch operations per call, forward and backward; ``torch.compile`` fuses them into a few
kernels (benchmarks/compile_energy.py: the GARCH posterior's U and ∇U at a batch of 256, 36 ms
eager against 3.1 ms compiled on one loaded core) but compiling takes tens of seconds to minutes
once (91 s for that one on the same core; less from torch's on-disk cache the next time).

``choose_energy`` decides, before the first step, by measurement: it times a few eager calls of
U and ∇U at the training batch's shape, and compiles when those calls over all the planned steps
would take more than COMPILE_PAYS × the expected compile time (COMPILE_SECONDS). Expressions and
built-ins are compiled only when asked ("on"): they are already a few fused operations. The
compiled U is used by the training loop alone (at its one batch shape, ``dynamic=False``); the
report, the figures and everything else call the eager U. A compilation that fails (at the first
call, where torch.compile does its work) falls back to the eager U, and the reason is kept for
the user (``CompiledEnergy.note``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcli.energy import Energy

COMPILE_MODES = ("auto", "on", "off")
COMPILE_SECONDS = 60.0  # what one compilation of a loop-heavy U is expected to cost
COMPILE_PAYS = 2.0  # compile when the eager U would cost this many times that over the fit
TIMED_CALLS = 3  # eager calls timed (after one that warms up)
# the steps a fit that stops once converged is expected to run (GARCH at the defaults stopped at
# 2,000 of 8,000: benchmarks/compile_energy.py); a compilation that would pay over 8,000 steps
# can cost more than it saves over those (82 s cold against 107 s eager for the whole GARCH run)
CONVERGED_STEPS = 2000


@dataclass
class CompiledEnergy:
    """The U the training loop calls, and what was decided: ``compiled`` (True once a compiled
    U has run), ``eager_ms`` (one eager call of U and ∇U at the batch, as timed; None if not
    timed), and ``note`` (why it is or is not compiled, for metrics.json and the user)."""

    fn: Callable[[Tensor], Tensor]  # the Energy itself when not compiled
    compiled: bool
    eager_ms: float | None
    note: str


def time_eager(energy: Energy, z: Tensor, calls: int = TIMED_CALLS) -> float:
    """Milliseconds per eager call of U and its gradient at points like z (N, D)."""
    x = z.detach().clone().requires_grad_(True)
    energy(x).sum().backward()  # the first call may load or build things
    t = time.perf_counter()
    for _ in range(calls):
        x.grad = None
        energy(x).sum().backward()
    return (time.perf_counter() - t) / calls * 1000


def probe_points(
    shape: tuple[int, int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal points of ``shape`` (N, D) from a generator of their own, so that timing or
    compiling U leaves the fit's random stream as it was."""
    g = torch.Generator(device).manual_seed(0)
    return torch.randn(*shape, generator=g, device=device, dtype=dtype)


def choose_energy(
    energy: Energy,
    mode: str,
    shape: tuple[int, int],
    steps: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CompiledEnergy:
    """The U for ``steps`` training steps at batches of ``shape`` (N, D) on ``device`` in
    ``dtype``, by ``mode``: "off",
    the eager U; "on", compiled; "auto", compiled only for a Python-file energy whose eager calls
    over the steps would cost more than COMPILE_PAYS × COMPILE_SECONDS (see the module's
    docstring). Only the CPU and CUDA are compiled for; any other device stays eager."""
    if mode == "off":
        return CompiledEnergy(energy, False, None, "not compiled (--compile-energy off)")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return CompiledEnergy(energy, False, None, f"not compiled on {device.type}")
    if mode == "auto" and energy.source.get("kind") != "file":
        note = "not compiled: an expression or built-in is already a few fused operations"
        return CompiledEnergy(energy, False, None, note)
    z = probe_points(shape, device, dtype)  # only where U is timed or compiled
    eager_ms = None
    if mode == "auto":
        eager_ms = time_eager(energy, z)
        total = eager_ms / 1000 * steps
        if total <= COMPILE_PAYS * COMPILE_SECONDS:
            note = (
                f"not compiled: U and ∇U take {eager_ms:.2f} ms a step, {total:.0f} s over "
                f"{steps} steps, less than {COMPILE_PAYS:g} × a compilation "
                f"(~{COMPILE_SECONDS:.0f} s)"
            )
            return CompiledEnergy(energy, False, eager_ms, note)
    return _compiled(energy, z, eager_ms)


def _compiled(energy: Energy, z: Tensor, eager_ms: float | None) -> CompiledEnergy:
    """torch.compile(U), compiled now (one call at z's shape) so that a failure falls back here
    rather than in the middle of the fit; the eager U with the reason if it fails."""
    fn = torch.compile(energy.fn, dynamic=False)
    t = time.perf_counter()
    try:
        x = z.detach().clone().requires_grad_(True)
        fn(x).sum().backward()
    except Exception as e:  # torch.compile raises many kinds (BackendCompilerFailed, …)
        reason = " ".join(str(e).split())[:200]
        note = (
            f"compiling U failed ({type(e).__name__}: {reason}); the fit uses the eager U, which "
            "gives the same results, more slowly"
        )
        return CompiledEnergy(energy, False, eager_ms, note)
    spent = time.perf_counter() - t
    why = f"U and ∇U took {eager_ms:.2f} ms a step eager; " if eager_ms is not None else ""
    return CompiledEnergy(fn, True, eager_ms, f"compiled ({why}compiling took {spent:.0f} s)")
