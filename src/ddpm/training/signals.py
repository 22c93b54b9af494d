"""SIGTERM and Ctrl-C during training: ask the loop to stop after the current step (it then saves a
checkpoint and returns); a second Ctrl-C aborts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["StopOnSignals"]


class StopOnSignals:
    """Context manager: SIGTERM / SIGINT call `request(name)`; `pending()` says whether one already came.

    Handlers are installed from the main thread only (Python's rule) and restored on exit.
    """

    def __init__(self, request: Callable[[str], None], pending: Callable[[], bool]):
        self.request, self.pending = request, pending
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting for the checkpoint
        self.request(signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
