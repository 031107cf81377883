"""Stopping a fit cleanly on Ctrl-C (SIGINT) or SIGTERM.

While ``stop_on_signals()`` is active, the first signal only sets a flag that the training loop
polls after every step (``nfcli.train.fit(stop=...)``): the step in progress finishes, the fit
returns what it has, and the caller writes its outputs. A second signal raises KeyboardInterrupt
at once (files already written stay whole: every write is atomic).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Callable flag: True once a signal asked the fit to stop; ``name`` says which."""

    def __init__(self) -> None:
        self.name: str | None = None

    def __call__(self) -> bool:
        return self.name is not None


@contextlib.contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = SIGNALS, announce: bool = True
) -> Iterator[StopRequest]:
    """Handle ``signals`` as a stop request for the duration; the previous handlers come back
    afterwards. Outside the main thread (where Python cannot set handlers) nothing is handled."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.name is not None:
            raise KeyboardInterrupt
        request.name = signal.Signals(signum).name
        if announce:
            sys.stderr.write(
                f"\n{request.name}: finishing this step and writing the outputs "
                "(send it again to stop at once)\n"
            )

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
