"""A progress bar for long work, drawn only when stderr is a terminal (scripts see no noise)."""

from __future__ import annotations

import sys


class ProgressBar:
    WIDTH = 30

    def __init__(self, label: str, stream=sys.stderr):
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        self.open_line = False

    def __call__(self, fraction: float, stage: str) -> None:
        if not self.enabled:
            return
        filled = int(self.WIDTH * fraction)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {stage:<28}")
        self.open_line = fraction < 1.0
        if not self.open_line:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        """End a bar left half-drawn (by an error), so the next line starts clean."""
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False
