"""A small progress bar on stderr: count, records/s and ETA, no dependencies.

The bar redraws one line in place (at most every ``interval`` seconds) only when
the stream is a terminal, or when forced (``enabled=True`` or
``FLARESTREAM_PROGRESS=1``); otherwise it stays silent while running, so logs and
pipes are not flooded. :meth:`Progress.finish` always writes one summary line,
``<label>: <n> <unit> in <s> s (<rate> <unit>/s)``, terminal or not.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

ENV_FORCE = "FLARESTREAM_PROGRESS"
_WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts work done towards an optional ``total`` and shows rate and ETA.

    Not thread-safe: one producer of progress. ``total`` may be an upper bound
    (filters skip records): the bar then ends below 100 % and the ETA is an
    upper bound too.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "records",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            forced = os.environ.get(ENV_FORCE, "").strip().lower()
            if forced in ("0", "false", "no"):
                enabled = False
            elif forced:
                enabled = True
            else:
                enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.interval = interval
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._finished = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    @property
    def rate(self) -> float:
        """Work per second since the start (0 before any time has passed)."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more; redraw when due."""
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self._draw()

    def line(self) -> str:
        """The bar as it would be drawn now."""
        rate = self.rate
        text = f"{self.label} {self.done:,}"
        if self.total:
            share = min(1.0, self.done / self.total)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            text = f"{self.label} {share:4.0%} |{bar}| {self.done:,}/{self.total:,}"
        text += f" {self.unit}  {rate:,.0f}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f"  ETA {_clock((self.total - self.done) / rate)}"
        return text

    def _draw(self) -> None:
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()
        self._drawn = True

    def finish(self, extra: str = "") -> str:
        """End the bar and write the summary line (always); returns it. Idempotent."""
        elapsed = self.elapsed
        rate = self.done / elapsed if elapsed > 0 else 0.0
        summary = (
            f"{self.label}: {self.done:,} {self.unit} in {elapsed:.1f} s "
            f"({rate:,.0f} {self.unit}/s)"
        )
        if extra:
            summary += f"; {extra}"
        if self._finished:
            return summary
        self._finished = True
        prefix = "\r\x1b[K" if self._drawn else ""
        self.stream.write(prefix + summary + "\n")
        self.stream.flush()
        return summary
