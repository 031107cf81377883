"""The training loop's compiled parts, the energy U and the flow, each by torch.compile where it
pays and eager otherwise.

The energy (``choose_energy``).

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

The flow (``choose_flow``). A training step pushes standard base draws ε through the flow
(``Flow.push``), forward and backward; eager, that is many small operations (2-D planar, K = 32:
three fused ones per layer each way, ``PlanarStack``) whose dispatch, not arithmetic, sets the
speed. Compiled, the K layers of every sample run in a few fused loops (the planar layers as
``planar_chain``). The compiled flow does not depend on the target, so torch's on-disk cache
serves every later fit of the same architecture and batch, whatever its energy; nfcli records
what each compilation it made measured (``FLOW_RECORDS`` in torch's cache folder: the eager and
compiled steps' times, how long compiling took and whether it was from the cache). "auto" times
a few eager steps of the flow and compiles when the time it expects to save over the fit
exceeds COMPILE_PAYS × the compilation's expected cost: without a record, FLOW_SAVED of the
eager time against FLOW_COMPILE_SECONDS; with one, the measured saving against the recorded
cached compilation (or FLOW_CACHED_SHARE of the recorded first one). ``benchmarks/
compile_flow.py`` measured the constants. ε is drawn eagerly, outside the compiled part,
so that the random stream, and with it every draw, is that of the eager fit; the compiled flow
gives the eager flow's results to rounding (``tests/test_compiled.py``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from nfcli.energy import Energy
from nfcli.flows import Flow

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
    shape: tuple[int, ...], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal points of ``shape`` (U's (N, D), or the flow's ε (R, N, D)) from a
    generator of their own, so that timing or compiling leaves the fit's random stream as it was."""
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


FLOW_BACKEND = "inductor"  # torch.compile's backend for the flow (tests use a quicker one)
FLOW_COMPILE_SECONDS = 40.0  # a flow's first compilation (benchmarks/compile_flow.py: 22–48 s)
# a compilation from torch's on-disk cache, as a share of the first one (measured 6–38%: the
# tracing is done again, the C++ is not) when only a first compilation has been recorded
FLOW_CACHED_SHARE = 0.4
# the share of the eager flow's time that compiling is expected to save before it has been
# measured (benchmarks/compile_flow.py: from −0.2, planar at a batch of 1024, to 0.77, radial)
FLOW_SAVED = 0.5
FLOW_RECORDS = "nfcli-compiled-flows"  # the folder, in torch's cache, of nfcli's records


@dataclass
class CompiledFlow:
    """The flow step the training loop calls, ε (R, N, D) → (z (R, N, D), ln q (R, N)), and what
    was decided: ``compiled`` (True when the compiled flow is used), ``eager_ms`` and
    ``compiled_ms`` (one step of the flow, forward and backward, as timed; None if not timed)
    and ``note`` (why it is or is not compiled, for metrics.json and the user)."""

    fn: Callable[[Tensor], tuple[Tensor, Tensor]]  # Flow.push itself when not compiled
    compiled: bool
    eager_ms: float | None
    note: str
    compiled_ms: float | None = None


def time_flow(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]], flow: Flow, eps: Tensor, calls: int
) -> float:
    """Milliseconds per step of ``fn`` (``flow.push`` or its compilation), forward and backward,
    at ε, after one untimed step; the flow's gradients are left as they were (none)."""
    t = 0.0
    for i in range(calls + 1):
        if i == 1:
            if eps.device.type == "cuda":
                torch.cuda.synchronize(eps.device)
            t = time.perf_counter()
        z, log_q = fn(eps)
        (z.sum() + log_q.sum()).backward()
    if eps.device.type == "cuda":
        torch.cuda.synchronize(eps.device)
    for p in flow.parameters():
        p.grad = None
    return (time.perf_counter() - t) / max(calls, 1) * 1000


def flow_record(flow: Flow, eps: Tensor, backend: str) -> Path | None:
    """Where nfcli records its measurement of this flow compiled at ε's shape, dtype and device
    by ``backend`` with this torch (a file in torch's cache folder, which torch's own compiled
    code shares); None where torch does not say where that folder is."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # a torch that moved it: no records, every compilation counted cold
        return None
    key = json.dumps(
        [flow.architecture, list(eps.shape), str(eps.dtype), eps.device.type, backend,
         torch.__version__],
        sort_keys=True,
    )  # fmt: skip
    return Path(cache_dir()) / FLOW_RECORDS / hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass
class FlowRecord:
    """What the latest compilation of a flow measured: its eager and compiled steps (ms), how
    long compiling took (s), and whether that compilation found an earlier one's record (and
    so, most likely, torch's cache)."""

    eager_ms: float
    compiled_ms: float
    compiling_s: float
    cached: bool

    @property
    def share_saved(self) -> float:
        return 1.0 - self.compiled_ms / self.eager_ms

    @property
    def cached_s(self) -> float:
        """The expected cost of the next compilation, from torch's cache."""
        return self.compiling_s if self.cached else FLOW_CACHED_SHARE * self.compiling_s


def read_record(record: Path | None) -> FlowRecord | None:
    """An earlier compilation's record, or None if there is none (or it cannot be read)."""
    if record is None:
        return None
    try:
        d = json.loads(record.read_text())
        return FlowRecord(
            float(d["eager_ms"]), float(d["compiled_ms"]), float(d["compiling_s"]), d["cached"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose_flow(
    flow: Flow,
    mode: str,
    shape: tuple[int, int, int],
    steps: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> CompiledFlow:
    """The flow step for ``steps`` training steps at draws of ``shape`` (R, N, D), by ``mode``:
    "off", the eager ``flow.push``; "on", compiled (torch.compile with ``backend``, by default
    FLOW_BACKEND); "auto", compiled when the time it is expected to save over the steps exceeds
    COMPILE_PAYS × the compilation's expected cost, and used only if its step then times faster
    than the eager one (see the module's docstring). Only the CPU and CUDA are compiled for; any
    other device stays eager. ``flow`` is on ``device`` in ``dtype``."""
    if mode == "off":
        return CompiledFlow(flow.push, False, None, "not compiled (--compile-flow off)")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return CompiledFlow(flow.push, False, None, f"not compiled on {device.type}")
    backend = backend or FLOW_BACKEND
    eps = probe_points(shape, device, dtype)
    eager_ms = time_flow(flow.push, flow, eps, TIMED_CALLS)
    record = flow_record(flow, eps, backend)
    if mode == "auto":
        before = read_record(record)
        share = FLOW_SAVED if before is None else before.share_saved
        cost = FLOW_COMPILE_SECONDS if before is None else before.cached_s
        saved = share * eager_ms / 1000 * steps
        if saved <= COMPILE_PAYS * cost:
            measured = (
                "" if before is None else f" (measured: {before.compiled_ms:.2f} ms compiled)"
            )
            note = (
                f"not compiled: the flow's step takes {eager_ms:.2f} ms eager{measured}; "
                f"compiling would save ~{max(saved, 0):.0f} s over {steps} steps, less than "
                f"{COMPILE_PAYS:g} × a {'cached ' if before else ''}compilation (~{cost:.0f} s)"
            )
            return CompiledFlow(flow.push, False, eager_ms, note)
    return _compiled_flow(flow, eps, eager_ms, record, backend, mode)


def _compiled_flow(
    flow: Flow, eps: Tensor, eager_ms: float, record: Path | None, backend: str, mode: str
) -> CompiledFlow:
    """torch.compile(flow.push), compiled now (one step forward and backward at ε's shape) so
    that a failure falls back here rather than in the middle of the fit, then timed; the
    measurement is recorded (``flow_record``). The eager flow, with the reason, if compiling
    fails, or if ``mode`` is "auto" and the compiled step is not faster."""
    fn = torch.compile(flow.push, dynamic=False, backend=backend)
    t = time.perf_counter()
    try:
        time_flow(fn, flow, eps, 0)
    except Exception as e:  # torch.compile raises many kinds (BackendCompilerFailed, …)
        for p in flow.parameters():
            p.grad = None
        reason = " ".join(str(e).split())[:200]
        note = (
            f"compiling the flow failed ({type(e).__name__}: {reason}); the fit uses the eager "
            "flow, which gives the same results, more slowly"
        )
        return CompiledFlow(flow.push, False, eager_ms, note)
    spent = time.perf_counter() - t
    compiled_ms = time_flow(fn, flow, eps, TIMED_CALLS)
    if record is not None:
        measured = FlowRecord(eager_ms, compiled_ms, spent, read_record(record) is not None)
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(asdict(measured)))
        except OSError:  # a read-only cache: the next fit expects a cold compilation
            pass
    timing = f"its step takes {compiled_ms:.2f} ms against {eager_ms:.2f} eager"
    if mode == "auto" and compiled_ms >= eager_ms:
        note = f"compiled, but not used: {timing} (compiling took {spent:.0f} s)"
        return CompiledFlow(flow.push, False, eager_ms, note, compiled_ms)
    return CompiledFlow(fn, True, eager_ms, f"compiled ({timing}; compiling took {spent:.0f} s)",
                        compiled_ms)  # fmt: skip
