"""A progress bar for long work in a terminal; plain stage lines when stderr is a file."""

from __future__ import annotations

import sys


class ProgressBar:
    WIDTH = 30

    def __init__(self, label: str, stream=sys.stderr):
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.last_stage = ""

    def __call__(self, fraction: float, stage: str) -> None:
        if self.tty:
            filled = int(self.WIDTH * fraction)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            end = "\n" if fraction >= 1.0 else ""
            self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {stage:<28}{end}")
            self.stream.flush()
        elif stage != self.last_stage:
            self.stream.write(f"{self.label}: {fraction:4.0%} {stage}\n")
            self.stream.flush()
        self.last_stage = stage
