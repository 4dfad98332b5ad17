"""A progress line for training: steps, loss, accuracy, steps/s and ETA.

Each training step is one jitted call that returns before the line is redrawn, so the line
moves with the computation even when a single step runs for seconds. On a terminal the line
is redrawn in place (at most ``1 / min_interval`` times a second); elsewhere (a log file,
CI) a full line is printed every ``log_interval`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """``update(step, **metrics)`` after each step; ``close()`` at the end.

    Args:
      total: the last step number.
      start: the step the run (re)starts from (so the rate counts only this run's steps).
      stream: where to write (default ``sys.stderr``).
      width: characters of the bar.
    """

    def __init__(self, total: int, start: int = 0, stream=None, width: int = 24, min_interval: float = 0.1,
                 log_interval: float = 10.0, enabled: bool = True):
        self.total, self.start, self.width = int(total), int(start), int(width)
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval if self.tty else log_interval
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._last_draw = -float("inf")
        self._line = ""

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self.t0
        return (step - self.start) / dt if dt > 0 else 0.0

    def render(self, step: int, **metrics) -> str:
        frac = step / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "=" * max(filled - 1, 0) + (">" if 0 < filled < self.width else "=" * (filled > 0))
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        parts = [f"{step}/{self.total} [{bar:<{self.width}}]"]
        parts += [f"{k} {v:.4g}" for k, v in metrics.items() if v is not None]
        parts.append(f"{rate:.2f} step/s")
        parts.append(f"ETA {format_seconds(eta)}" if eta == eta else "ETA ?")
        return "  ".join(parts)

    def update(self, step: int, **metrics) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self._last_draw < self.min_interval and step < self.total):
            return
        self._last_draw = now
        line = self.render(step, **metrics)
        if self.tty:
            pad = max(len(self._line) - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
        else:
            self.stream.write(line + "\n")
        self._line = line
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
