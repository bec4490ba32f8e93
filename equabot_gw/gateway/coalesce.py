"""Coalescing a run's text deltas into few events, each carrying the text so far.

The control protocol's assistant events carry the whole reply so far, so an
event per provider delta costs O(N²) bytes and CPU for a reply of N
characters. ``TextSoFar`` keeps the reply in one growing string and says when
the next event is due: at most one per ``interval`` seconds, or sooner once
``chars`` characters of new text wait. Since every event repeats the text so
far, the gap between events also grows with the text (``max_chars_per_second``),
so a long reply costs linear bytes, whatever its provider's pace. Pure
bookkeeping: the caller owns the clock and the sending.
"""

from __future__ import annotations

from typing import Final

__all__ = ["TextSoFar", "COALESCE_INTERVAL", "COALESCE_CHARS", "MAX_EVENT_CHARS_PER_SECOND"]

# The original Gateway throttles its chat deltas to one per 150 ms.
COALESCE_INTERVAL: Final = 0.150
# New text that makes an event due before the interval has passed.
COALESCE_CHARS: Final = 16 * 1024
# Text-so-far characters one run's events may repeat per second: a 1 MiB reply
# gets an event per second at most, a 4 MiB one every 4 s.
MAX_EVENT_CHARS_PER_SECOND: Final = 1024 * 1024


class TextSoFar:
    """The reply so far plus the deltas not yet sent; times are the caller's clock (seconds)."""

    __slots__ = ("text", "interval", "chars", "rate", "_pending", "_pending_chars", "_last")

    def __init__(self, *, interval: float = COALESCE_INTERVAL, chars: int = COALESCE_CHARS,
                 max_chars_per_second: int = MAX_EVENT_CHARS_PER_SECOND) -> None:
        self.text = ""                      # what the events sent so far carried
        self.interval = interval
        self.chars = chars
        self.rate = max_chars_per_second
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last = float("-inf")          # when the last event went out

    @property
    def pending(self) -> bool:
        """Whether text waits to be sent."""
        return self._pending_chars > 0

    def add(self, delta: str) -> None:
        """Append a provider delta (not sent yet)."""
        if delta:
            self._pending.append(delta)
            self._pending_chars += len(delta)

    def wait(self, now: float) -> float | None:
        """Seconds until the next event is due (0: now); None when nothing waits."""
        if not self._pending_chars:
            return None
        # Each event repeats the text so far: space them so that costs at most `rate`/s.
        floor = (len(self.text) + self._pending_chars) / self.rate
        gap = max(self.interval, floor) if self._pending_chars < self.chars else floor
        return max(0.0, self._last + gap - now)

    def take(self, now: float) -> str:
        """The coalesced delta; the text so far grows by it. Marks an event sent at ``now``."""
        delta = self._pending[0] if len(self._pending) == 1 else "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        self.text += delta
        self._last = now
        return delta
