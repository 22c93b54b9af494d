"""SIGTERM and Ctrl-C during training: ask the loop to stop after the current step (it then saves a
checkpoint and raises `TrainingInterrupted`); a second Ctrl-C aborts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["StopOnSignals", "TrainingInterrupted"]


class TrainingInterrupted(Exception):
    """Training stopped early by a signal (or `Trainer.request_stop`) after saving a checkpoint.

    `exit_code` is what a shell reports for the signal (128 + its number: 130 for SIGINT, 143 for SIGTERM;
    1 for a request from code), so `ddpm train` tells a job scheduler that the job did not finish.
    """

    def __init__(self, reason: str, *, step: int, run_dir: Any, resume: str | None = None):
        self.reason, self.step, self.run_dir = reason, step, run_dir
        self.exit_code = 128 + signal.Signals[reason] if reason in signal.Signals.__members__ else 1
        resume = resume or f"`ddpm train --resume {run_dir}`"
        super().__init__(f"stopped by {reason} at step {step}; checkpoint saved. Continue with {resume}")


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
