"""Stop training cleanly on SIGINT (Ctrl-C) or SIGTERM (a cluster pre-empting the job).

The first signal only raises a flag: the trainer finishes the step it is on, every rank learns of
the flag through the step's own all-reduce (no extra sync), they write a checkpoint together and
the run ends with `TrainingInterrupted`; the CLI prints how to resume and exits 128 + the signal
number (130 for SIGINT, 143 for SIGTERM, the shell's convention). A second signal exits at once,
without a checkpoint. A second signal within DUPLICATE_WINDOW_S of the first is the same event
delivered twice -- torchrun's agent forwards the signal that the terminal or the scheduler
already sent to every worker's process group -- and is ignored.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
DUPLICATE_WINDOW_S = 1.0


def _say(text: str) -> None:
    """Write to stderr's file descriptor directly: a handler printing through sys.stderr while
    the interrupted code (tqdm) is writing to it raises "reentrant call"."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        fd = 2
    os.write(fd, text.encode())


class TrainingInterrupted(Exception):
    """A signal stopped the run after a checkpoint was written at `step`."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name}: stopped after step {step}; checkpoint {checkpoint}")


class GracefulStop:
    """A context manager: while inside, SIGINT/SIGTERM set `signum` instead of killing the
    process; on exit the previous handlers come back (pretrain() is a library call too).
    Outside the main thread signals cannot be caught, and nothing is installed."""

    def __init__(self):
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
            _say(f"\n{name}: finishing this step and writing a checkpoint (send it again to stop at once)\n")
        elif time.monotonic() - self._first_at > DUPLICATE_WINDOW_S:
            _say(f"{name} again: stopping now, without a checkpoint\n")
            os._exit(128 + signum)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
