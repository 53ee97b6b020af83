"""Failure detection for auto-recovery (docs/architecture.md#recovery): loss spikes / non-finite loss, and hangs.

* :class:`LossGuard` tells the trainer, per step, whether the loss is ``ok``, ``non_finite`` or a ``spike``
  (loss > ``spike_factor`` × the running median of the last ``window`` ok losses, once ``warmup`` ok
  losses have been seen). On anything but ``ok`` the trainer rolls back to the last checkpoint, skips the
  offending batch, and records ``GoodputTracker.record_failure("loss_spike")``.
* :class:`HangWatchdog` is a daemon thread: if ``heartbeat()`` is not called within ``timeout_s`` it calls
  ``on_hang(stalled_seconds)`` (e.g. ``tracker.record_failure("hang", fatal=True, t=time.time() - s)``)
  and ends the process with ``os._exit(HANG_EXIT_CODE)``. A rank stuck in a collective cannot be
  unwound from Python; exiting is what lets torchrun's elastic agent tear down and restart the group.

This module imports no torch, so it can guard any loop.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

HANG_EXIT_CODE = 87  # distinctive: torchrun restarts on any non-zero code; logs and tests can tell hangs apart


class LossVerdict(str, enum.Enum):
    OK = "ok"
    NON_FINITE = "non_finite"
    SPIKE = "spike"


class LossGuard:
    """Per-step loss check.

    Args:
        spike_factor: a loss above ``spike_factor × median(window)`` is a spike (needs a positive median;
            losses ≤ 0 are never called spikes).
        window: how many recent ok losses the median is taken over.
        warmup: ok losses to see before spikes are judged (early losses move fast). Non-finite losses are
            caught from the first step.
    Rejected losses never enter the window. ``state_dict``/``load_state_dict`` let it ride in checkpoints.
    """

    def __init__(self, spike_factor: float = 3.0, window: int = 50, warmup: int = 20):
        if spike_factor <= 1.0:
            raise ValueError(f"spike_factor must be > 1, got {spike_factor}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.spike_factor = float(spike_factor)
        self.window = int(window)
        self.warmup = int(warmup)
        self.history: collections.deque[float] = collections.deque(maxlen=self.window)
        self.seen_ok = 0
        self.consecutive_bad = 0
        self.last_median: float | None = None

    def check(self, loss: float) -> LossVerdict:
        loss = float(loss)
        if not math.isfinite(loss):
            self.consecutive_bad += 1
            return LossVerdict.NON_FINITE
        if self.seen_ok >= self.warmup and self.history:
            med = statistics.median(self.history)
            self.last_median = med
            if med > 0 and loss > self.spike_factor * med:
                self.consecutive_bad += 1
                return LossVerdict.SPIKE
        self.history.append(loss)
        self.seen_ok += 1
        self.consecutive_bad = 0
        return LossVerdict.OK

    __call__ = check

    def state_dict(self) -> dict:
        return {"history": list(self.history), "seen_ok": self.seen_ok}

    def load_state_dict(self, sd: dict) -> None:
        self.history = collections.deque((float(x) for x in sd["history"]), maxlen=self.window)
        self.seen_ok = int(sd["seen_ok"])
        self.consecutive_bad = 0


class HangWatchdog:
    """Ends the process when the training loop stops calling :meth:`heartbeat`.

    Args:
        timeout_s: longest allowed gap between heartbeats.
        on_hang: called once with the stalled seconds before exiting (exceptions are logged, not raised).
        initial_timeout_s: gap allowed before the first heartbeat (init, first compile); default timeout_s.
        exit_code: process exit code on a hang (default :data:`HANG_EXIT_CODE`).
        poll_s: how often the thread checks (default min(timeout/4, 1 s)).
        exit_fn: what ends the process (default ``os._exit``; tests can inject).
    The daemon thread runs from :meth:`start` (or the constructor with ``start=True``), so the gap before
    the training loop begins is not judged.
    """

    def __init__(
        self,
        timeout_s: float,
        on_hang: Callable[[float], None] | None = None,
        *,
        initial_timeout_s: float | None = None,
        exit_code: int = HANG_EXIT_CODE,
        poll_s: float | None = None,
        exit_fn: Callable[[int], None] = os._exit,
        start: bool = False,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.initial_timeout_s = float(initial_timeout_s) if initial_timeout_s is not None else self.timeout_s
        self.on_hang = on_hang
        self.exit_code = int(exit_code)
        self.poll_s = poll_s if poll_s is not None else min(self.timeout_s / 4, 1.0)
        self.exit_fn = exit_fn
        self._last = time.monotonic()
        self._beats = 0
        self._stop = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="HangWatchdog", daemon=True)
        if start:
            self.start()

    def start(self) -> HangWatchdog:
        self._last = time.monotonic()
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def heartbeat(self) -> None:
        self._last = time.monotonic()
        self._beats += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=max(1.0, 2 * self.poll_s))

    def __enter__(self) -> HangWatchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            limit = self.timeout_s if self._beats else self.initial_timeout_s
            stalled = time.monotonic() - self._last
            if stalled > limit:
                self._fire(stalled)
                return

    def _fire(self, stalled: float) -> None:
        self.fired = True
        msg = f"HangWatchdog: no heartbeat for {stalled:.1f}s (limit {self.timeout_s:.1f}s); exiting with {self.exit_code}"
        log.error(msg)
        print(msg, file=sys.stderr, flush=True)
        if self.on_hang is not None:
            try:
                self.on_hang(stalled)
            except Exception as e:  # the exit must happen regardless
                log.error("on_hang callback failed: %s", e)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            self.exit_fn(self.exit_code)
