"""Progress of long work on stderr: a bar redrawn in place on a terminal; elsewhere (a log, a
pipe) nothing, or with ``lines``, plain lines, so that scripts see no noise."""

from __future__ import annotations

import sys
import threading
import time


class ProgressBar:
    WIDTH = 30
    # Plain lines start once the work has run this long: quick work (and an error found at
    # once, which must stay the one line on stderr) prints none.
    LINES_AFTER = 5.0

    def __init__(self, label: str, stream=None, lines: bool = False):
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.lines = lines and not self.enabled  # plain lines where no bar can be drawn
        self.open_line = False
        self._lock = threading.Lock()  # the work reports from its thread, the timer from its
        self._started = time.monotonic()
        self._timer: threading.Timer | None = None
        self._latest: tuple[float, str] | None = None  # the last report
        self._said: str | None = None  # the stage of the last line written
        self._closed = False

    def __call__(self, fraction: float, stage: str) -> None:
        if self.lines:
            self._report_line(fraction, stage)
            return
        if not self.enabled:
            return
        filled = int(self.WIDTH * fraction)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {stage:<28}")
        self.open_line = fraction < 1.0
        if not self.open_line:
            self.stream.write("\n")
        self.stream.flush()

    def _report_line(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._latest = (fraction, stage)
            waited = time.monotonic() - self._started
            if waited >= self.LINES_AFTER:
                self._write_latest()
            elif self._timer is None:  # the stage running when the delay ends gets a line
                self._timer = threading.Timer(self.LINES_AFTER - waited, self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._write_latest()

    def _write_latest(self) -> None:
        if self._closed or self._latest is None or self._latest[1] == self._said:
            return
        fraction, stage = self._latest
        self._said = stage
        self.stream.write(f"{self.label}: {fraction:4.0%} {stage}\n")
        self.stream.flush()

    def close(self) -> None:
        """End a bar left half-drawn (by an error), so the next line starts clean; no
        plain line comes after this."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False
