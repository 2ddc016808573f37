"""The local runner: the per-user core (``operators/user_core.py``) driven as the Flink job drives it,
without Flink. Values live in dicts (stored as the job stores them, through ``state/slots.py``), wake-ups
in a heap, and event time advances with the events: a user's wake-up fires once the watermark (the
newest event time less the allowed out-of-orderness) has passed it, before the next event is applied.

With a :class:`ValueCache` it keeps decoded values between calls as the micro-batched operator does,
writing an event's changes back every ``write_back_every`` events (the job: before each checkpoint) and a
wake-up's at its end.

Benchmarks, offline evaluation and tests use it, so the sequence of steps exists once, in the core.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import TypeVar

from operators.events import Event
from operators.user_core import Step, UserCore
from state.cache import ValueCache
from state.slots import StoredValues


class Cell:
    """One stored value: what ``ValueState`` offers the shell (``value``, ``update``, ``clear``)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: bytes | None = None

    def value(self) -> bytes | None:
        return self.data

    def update(self, data: bytes) -> None:
        self.data = data

    def clear(self) -> None:
        self.data = None


class UserCells(dict[str, Cell]):
    """A user's stored values by logical name, each created empty on first use."""

    def __missing__(self, name: str) -> Cell:
        cell = self[name] = Cell()
        return cell


T = TypeVar("T")


class Table(dict[str, T]):
    """A recommender shard's per-user values in a dict (``operators.recs.serving.UserTable``)."""

    def put(self, key: str, value: T) -> None:
        self[key] = value

    def remove(self, key: str) -> None:
        self.pop(key, None)


#: Called with each step and the user it was for, in order: what the job would emit, stage and send.
StepHandler = Callable[[str, Step], None]


class LocalRunner:
    """Feeds events to the core in order, and wakes users at their wake-up times as the watermark passes."""

    def __init__(self, core: UserCore, out_of_orderness_ms: int = 0, on_step: StepHandler | None = None,
                 cache: ValueCache | None = None, write_back_every: int = 0) -> None:
        self.core = core
        self.cache = cache
        self.write_back_every = write_back_every
        self.events = 0
        self.out_of_orderness_ms = out_of_orderness_ms
        self.on_step = on_step
        self.cells: dict[str, UserCells] = {}
        self.wakeups: list[tuple[int, str]] = []
        self.scheduled: set[tuple[int, str]] = set()
        """(time, user) already in the heap: like Flink's timers, a time set twice wakes once."""
        self.watermark = -(2**63)
        self.woken = 0
        """Wake-ups fired so far."""

    def event(self, key: str, event: Event) -> None:
        """Apply ``event`` at the user ``key``, after every wake-up the event's time lets the watermark pass."""
        self.advance(event.ts - self.out_of_orderness_ms - 1)
        values = self._values(key)
        self._done(key, values, self.core.on_event(values, key, event, self.watermark))
        self.events += 1
        if self.cache is not None:
            self.cache.defer(None, self.cache.take_changed())
            if self.write_back_every and self.events % self.write_back_every == 0:
                self.write_back()

    def advance(self, watermark: int) -> None:
        """Move the watermark to ``watermark`` (never back), waking every user whose time it reached."""
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        while self.wakeups and self.wakeups[0][0] <= watermark:
            timestamp, user = heapq.heappop(self.wakeups)
            self.scheduled.discard((timestamp, user))
            self.woken += 1
            values = self._values(user)
            self._done(user, values, self.core.on_timer(values, user, timestamp))
            if self.cache is not None:
                self.cache.woken(None, self._write)

    def write_back(self) -> None:
        """Write the cached changes into the stored values, as the job does before a checkpoint."""
        if self.cache is not None:
            self.cache.write_group(None, self._write)
            self.cache.trim()

    def restore(self) -> None:
        """Write back, then lose the cache, as a restore from the checkpoint just taken would."""
        if self.cache is not None:
            self.write_back()
            self.cache.clear()

    def users(self) -> Iterator[tuple[str, StoredValues]]:
        """Every user with stored values, and a view of them (read it, do not change it)."""
        self.write_back()
        for user, cells in self.cells.items():
            if any(cell.data is not None for cell in cells.values()):
                yield user, StoredValues(cells)

    def stored_bytes(self, user: str) -> dict[str, int]:
        """The size of each of the user's stored values, by name."""
        self.write_back()
        return {name: len(cell.data) for name, cell in self.cells.get(user, {}).items() if cell.data is not None}

    def _values(self, user: str) -> StoredValues:
        cells = self.cells.setdefault(user, UserCells())
        return self.cache.values(user, cells) if self.cache is not None else StoredValues(cells)

    def _write(self, user: str, name: str, data: bytes | None) -> None:
        cell = self.cells[user][name]
        if data is None:
            cell.clear()
        else:
            cell.update(data)

    def _done(self, user: str, values: StoredValues, step: Step) -> None:
        """Store what the call changed, schedule its wake-ups, hand its step on."""
        values.store()
        for timestamp in step.wakeups:
            if (timestamp, user) not in self.scheduled:
                self.scheduled.add((timestamp, user))
                heapq.heappush(self.wakeups, (timestamp, user))
        if self.on_step is not None:
            self.on_step(user, step)
