"""Gap-based sessions and the abandoned-cart return signal, in event time."""

from __future__ import annotations

from dataclasses import dataclass

VIEW_TYPES = frozenset({"page_view", "product_view"})


@dataclass
class Session:
    start: int
    end: int
    depth: int = 0
    """Page and product views in the session."""
    carted: bool = False
    purchased: bool = False

    @property
    def length_ms(self) -> int:
        return self.end - self.start

    @property
    def abandoned_cart(self) -> bool:
        return self.carted and not self.purchased


@dataclass
class SessionTracker:
    """The open session plus what later features need from closed ones.

    An event within ``gap_ms`` of the open session (before or after it) joins it; an event more
    than ``gap_ms`` after it closes it and opens a new one. An event more than ``gap_ms`` *before*
    the open session belongs to a session already closed: it is counted in ``out_of_order`` and does
    not change sessions (closed sessions are final).
    """

    current: Session | None = None
    previous_end: int | None = None
    abandoned_at: int | None = None
    """End of the most recent session that had a cart and no purchase."""
    returned_at: int | None = None
    """Start of the first session after ``abandoned_at`` if it began within the return window."""
    out_of_order: int = 0
    timer_at: int | None = None
    """Pending close timer, so the job keeps one per user rather than one per event."""

    def observe(self, event_type: str, ts: int, gap_ms: int, return_window_ms: int) -> Session | None:
        """Apply an event; returns the session this event closed, if any."""
        closed = None
        session = self.current
        if session is not None and ts < session.start - gap_ms:
            self.out_of_order += 1
            return None
        if session is not None and ts > session.end + gap_ms:
            closed = self.close()
            session = None
        if session is None:
            session = self.current = Session(start=ts, end=ts)
            if self.abandoned_at is not None and ts - self.abandoned_at <= return_window_ms:
                self.returned_at = ts
            elif self.returned_at is None:
                self.abandoned_at = None  # back too late to count as a return, but back: no longer abandoned
        session.start = min(session.start, ts)
        session.end = max(session.end, ts)
        session.depth += event_type in VIEW_TYPES
        session.carted |= event_type == "add_to_cart"
        session.purchased |= event_type == "purchase"
        return closed

    def close(self) -> Session | None:
        """Close the open session (its gap has passed in event time)."""
        session, self.current = self.current, None
        if session is None:
            return None
        self.previous_end = session.end
        if session.abandoned_cart:
            self.abandoned_at, self.returned_at = session.end, None
        elif session.purchased:
            self.abandoned_at, self.returned_at = None, None
        return session

    def needs_timer(self, gap_ms: int) -> int | None:
        """The close time to register a timer for, or None when one is pending (or no session is open)."""
        expiry = self.expiry(gap_ms)
        if expiry is None or self.timer_at is not None:
            return None
        self.timer_at = expiry
        return expiry

    def timer_fired(self, timestamp: int) -> None:
        if self.timer_at is not None and self.timer_at <= timestamp:
            self.timer_at = None

    def expiry(self, gap_ms: int) -> int | None:
        """Event time at which the open session closes unless another event arrives."""
        return None if self.current is None else self.current.end + gap_ms
