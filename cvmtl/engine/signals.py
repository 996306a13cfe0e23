"""A graceful stop on SIGINT / SIGTERM that every rank agrees on."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from cvmtl.distributed import all_reduce_sum, is_dist


class GracefulStop:
    """SIGINT / SIGTERM set a flag that the loop checks at each optimizer-step boundary, so the run
    can save ``last.pt`` and exit cleanly. A second SIGINT stops at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def stop_agreed(stop: GracefulStop, device: torch.device) -> bool:
    """Whether to stop now; under DDP all ranks agree (a signal may reach them at different
    steps, and a rank that stops alone would hang the others in the next all-reduce).

    Under DDP: one tiny all-reduce and one host read per call (the training loop calls it once
    per optimizer step, which already ends with a host read of the gradient norm, so the device
    queue is empty by then and the read costs one all-reduce latency)."""
    if not is_dist():
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
    all_reduce_sum(flag)
    agreed = flag.item() > 0
    if agreed and stop.signum is None:
        stop.signum = 15  # another rank got the signal; stop with it
    return agreed
