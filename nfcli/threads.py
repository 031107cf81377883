"""How many CPU threads torch uses: ``--threads N|auto`` on fit, compare, sample, plot, logprob.

Why not torch's default (one thread per core): torch's intra-op threads are OpenMP threads that
wait for each other at the end of every parallel operation. When another process keeps a core
busy, the thread on that core is descheduled and every operation waits for it, so a fit with two
threads on a 2-core machine with one busy core ran 14–40× slower than with one (a user's report:
12 against 487 it/s on a 300-step fit, 103 s against 7 s for ``nfcli plot``). And a small
problem gains nothing from a second thread even on an idle machine: torch runs an elementwise
operation on one thread below 32,768 elements, and a 2-D fit's tensors hold batch × D = 2,048.

The policy (``choose_threads``), in this order:

1. ``--threads N`` is used as given: a positive integer, at most ``os.cpu_count()``.
2. Else an ``OMP_NUM_THREADS`` the user set in the environment is the user's choice and is used
   (clamped to ``os.cpu_count()``; a value that is not a positive integer is ignored).
3. Else (``auto``): one thread when the problem's largest tensor (``Work``: rows × D) is below
   ``MIN_ELEMENTS_PER_THREAD`` elements per thread; otherwise as many threads as the size pays
   for (rows × D // ``MIN_ELEMENTS_PER_THREAD``) but never more than the cores that are free
   now, at least one. Free cores are measured, only in that case, by ``free_cores``: the idle time
   of the CPUs this process may run on (``os.sched_getaffinity``) over ``LOAD_SAMPLE_S`` seconds
   from ``/proc/stat``, or, where there is no ``/proc/stat``, the cores less the 1-minute load
   average. A core counts as free when at least 70% of it is idle.

The thread count is decided once, at the start of a command: a process that starts spinning on
a core later still slows a multi-threaded run down (``--threads 1`` is always safe).
``torch.set_num_interop_threads`` is left alone: nfcli runs no inter-op parallel work, and torch
allows setting it only once per process, before any parallel work, which a library cannot know.

What the size threshold rests on (``benchmarks/threads.py``, torch 2.13 CPU, a 2-core VM, K = 32,
batch 1024, a standard normal in D dimensions; it/s with 1 and 2 threads). When the machine was
quiet (1-minute load 1.0–1.4, this benchmark included):

    D            2      16     32     64     128    256    512    1024
    1 thread     180    131    103    70     44     25     13.2   5.9
    2 threads    182    143    111    81     56     33     16.3   8.4
    gain         1.0×   1.09×  1.08×  1.16×  1.27×  1.34×  1.23×  1.42×

(D = 16–256 from a second run, ``--dims 16,32,64,128,256``). When other jobs kept both cores
busy (load 4–4.7), two threads were slower than one at every size: 53× on U1 (95.0 against 1.8
it/s), 26× at D = 256, 5.7× at D = 1024; ``nfcli plot`` took 47.5 s against 16.0 s. On the quiet
machine with one core kept spinning by another process, two threads lost 3.0× on U1, 2.1× at
D = 128 and 1.8× at D = 1024, where ``auto`` measured one free core and kept one. So a second
thread gains at most ~1.4× on a quiet machine and can lose 5–50× on a busy one: ``auto`` takes it
only from 2 × 2¹⁶ = 131,072 elements (D = 128 at batch 1024, the first size where it gained more
than a quarter), one more thread per further 65,536 elements, and only on cores measured free.
More than two threads (machines with more cores) were not measured here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from nfcli.errors import NfcliError

AUTO = "auto"
MIN_ELEMENTS_PER_THREAD = 1 << 16  # a second thread from 131,072 (batch 1024 × D 128): see above
LOAD_SAMPLE_S = 0.1
FREE_IF_IDLE = 0.7  # a core at least this idle counts as free


@dataclass(frozen=True)
class Work:
    """The size of a command's largest tensors: ``rows`` points of ``dim`` variables (a fit's
    batch × restarts; the draws of ``sample``; the points of ``logprob``)."""

    rows: int
    dim: int

    @property
    def elements(self) -> int:
        return self.rows * self.dim


def cpu_count() -> int:
    return os.cpu_count() or 1


def parse_threads(text: str | int | None) -> int | None:
    """``--threads``: a positive integer at most ``os.cpu_count()``; None or 'auto' is None."""
    if text is None or (isinstance(text, str) and text.strip().lower() == AUTO):
        return None
    try:
        n = int(str(text).strip())
    except ValueError:
        n = None
    if n is None or n < 1:
        raise NfcliError(
            f"--threads {text!r} is not a thread count: give a positive integer such as "
            f"--threads 1, or --threads auto (the default) to let nfcli choose."
        )
    if n > cpu_count():
        raise NfcliError(
            f"--threads {n} is more than the {cpu_count()} CPUs of this machine; more threads "
            f"than cores only wait for each other. Use at most --threads {cpu_count()}, or leave "
            "the option out to let nfcli choose."
        )
    return n


def env_threads(environ: Mapping[str, str]) -> int | None:
    """OMP_NUM_THREADS when it is set to a positive integer (clamped to the CPU count)."""
    try:
        n = int(environ.get("OMP_NUM_THREADS", "").strip())
    except ValueError:
        return None
    return min(n, cpu_count()) if n >= 1 else None


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (all of them where affinity is not available)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(cpu_count()))


def _cpu_times() -> dict[int, tuple[int, int]]:
    """(idle, total) clock ticks of each CPU from /proc/stat (idle includes iowait)."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def free_cores(sample_s: float = LOAD_SAMPLE_S) -> int:
    """How many of this process's CPUs are free now: each CPU's idle fraction over ``sample_s``
    seconds (/proc/stat), counting CPUs at least FREE_IF_IDLE idle; elsewhere, the CPUs less the
    1-minute load average. At least 1: this process always has the core it runs on."""
    cpus = allowed_cpus()
    try:
        before = _cpu_times()
        time.sleep(sample_s)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            return 1  # no way to tell: one thread is the safe choice
        return max(1, math.floor(len(cpus) - load + 1 - FREE_IF_IDLE))
    free = 0
    for c in cpus:
        if c in before and c in after:
            idle = after[c][0] - before[c][0]
            total = after[c][1] - before[c][1]
            free += total > 0 and idle >= FREE_IF_IDLE * total
    return max(1, free)


def choose_threads(
    requested: str | int | None,
    work: Work,
    environ: Mapping[str, str] = os.environ,
    free: Callable[[], int] = free_cores,
) -> int:
    """The thread count for ``work`` (the policy in this module's docstring). ``environ`` and
    ``free`` (the count of free cores) are parameters so that tests can fix them."""
    n = parse_threads(requested)
    if n is not None:
        return n
    n = env_threads(environ)
    if n is not None:
        return n
    wanted = min(work.elements // MIN_ELEMENTS_PER_THREAD, len(allowed_cpus()))
    if wanted <= 1:
        return 1
    return max(1, min(wanted, free()))


def use_threads(requested: str | int | None, work: Work) -> int:
    """Choose the thread count for ``work`` and set it (``torch.set_num_threads``); returns it."""
    n = choose_threads(requested, work)
    torch.set_num_threads(n)
    return n
