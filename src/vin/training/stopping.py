"""Stopping a training run cleanly: SIGINT (Ctrl-C) or SIGTERM (SLURM, `timeout`, a job scheduler).

While `train` runs, the first SIGINT or SIGTERM only sets a flag; the loop finishes the step it
is in (under DDP possibly the next one: the ranks agree on the flag with the loss, so all stop
after the same step), writes a checkpoint and a log record of the steps since the last one, and
returns, so `--resume` continues where the run stopped instead of from the last `ckpt_every`
step, with the same weights and per-step losses as a run that never stopped. A second SIGINT
aborts at once (KeyboardInterrupt), as Ctrl-C normally does.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: catches SIGINT/SIGTERM (main thread only; elsewhere it never triggers;
    a signal the process ignores stays ignored).

    `signum` is 0 until a signal arrives, then the first signal's number."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGINT of a job started with `&`
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            if handler is not None:  # None: installed from C, cannot be put back from Python
                signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
