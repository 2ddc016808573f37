"""Users' decoded values kept between calls of the micro-batched user operator, written back to Flink's
state before every checkpoint instead of after every call.

Decoding a user's values and encoding them again took about a third of the per-user core's time when
it was done per call (docs/performance.md). Python cannot take part in a checkpoint (PyFlink has no
snapshot hook), so the Java batcher tells it when one comes: before each barrier it sends an empty
list to every shard it sent a list since the last one (``MicroBatchOperator``), and the operator then
writes that shard's changed users (:meth:`ValueCache.write_group`). What a list changed is therefore
in Flink's state before the barrier that follows the list, as before. A wake-up's changes wait for the
same marker when the shard got a list since its last marker (the batcher owes it one before the next
barrier); otherwise they are written at the end of the wake-up, since timers fire when the watermark
moves, which the other input going idle may do between a marker and its barrier
(:meth:`ValueCache.woken`). After a restore the cache is empty and everything is read from the
restored state. docs/architecture.md, "The decoded-value cache".

Unchanged users are dropped oldest first beyond ``max_users``, and an entry idle longer than Flink's
state TTL is read again (the state may have expired). Changed users stay until written.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from state.slots import SLOTS, StoredValues

#: Writes one value of a user: (user, logical name, encoded bytes or None to clear).
Write = Callable[[str, str, "bytes | None"], None]


class CachedUser:
    """One user's decoded values, and the names changed since they were last written."""

    __slots__ = ("changed", "decoded", "used")

    def __init__(self, used: float) -> None:
        self.decoded: dict[str, Any] = {}
        self.changed: set[str] = set()
        self.used = used


class CachedValues(StoredValues):
    """One call's view of a cached user (``operators.user_core.UserValues``): reads decode once per stay
    in the cache, and :meth:`store` only records what changed; :class:`ValueCache` writes it."""

    def __init__(self, states: Mapping[str, Any], user: str, entry: CachedUser, cache: ValueCache) -> None:
        super().__init__(states)
        self.decoded_values = entry.decoded
        self.user = user
        self.entry = entry
        self.cache = cache

    def stored(self, names: Iterable[str]) -> dict[str, bytes]:
        """The bytes of the values as they are now (Flink's state may not have them yet)."""
        return {name: SLOTS[name].encode(value) for name in names if (value := self.get(name)) is not None}

    def store(self) -> None:
        if self.changed:
            self.entry.changed |= self.changed
            self.cache.changed_in_call.add(self.user)
            self.changed = set()


class ValueCache:
    """Decoded values by user, least recently used first."""

    def __init__(self, max_users: int, max_idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_users = max_users
        self.max_idle_s = max_idle_s
        self.clock = clock
        self.users: OrderedDict[str, CachedUser] = OrderedDict()
        self.deferred: dict[Hashable, set[str]] = {}
        """Users with changes not yet written, by the group (shard) whose state holds them."""
        self.changed_in_call: set[str] = set()
        """Users changed since :meth:`take_changed`."""

    def values(self, user: str, states: Mapping[str, Any]) -> CachedValues:
        """The user's values for one call; ``states`` reads what the cache does not hold."""
        now = self.clock()
        entry = self.users.get(user)
        if entry is not None and (entry.changed or now - entry.used <= self.max_idle_s):
            self.users.move_to_end(user)
            entry.used = now
        else:
            entry = self.users[user] = CachedUser(now)
            self.users.move_to_end(user)
        return CachedValues(states, user, entry, self)

    def take_changed(self) -> set[str]:
        """The users changed since the last call of this method."""
        changed, self.changed_in_call = self.changed_in_call, set()
        return changed

    def defer(self, group: Hashable, users: Iterable[str]) -> None:
        """Write ``users``' changes at the next :meth:`write_group` of ``group`` (before the next checkpoint)."""
        self.deferred.setdefault(group, set()).update(users)

    def woken(self, group: Hashable, write: Write) -> None:
        """The end of a wake-up in ``group``: its changes wait for the group's marker when one is owed (a list
        of the group came since its last marker), else they are written now. Most wake-ups fire between a
        shard's lists, so a user woken several times (a session close, an intent deadline, a rule expiry)
        is encoded and written once per checkpoint, not once per wake-up."""
        changed = self.take_changed()
        if group in self.deferred:
            self.deferred[group].update(changed)
        else:
            self.write(sorted(changed), write)

    def write_group(self, group: Hashable, write: Write) -> None:
        """Write every deferred change of ``group``: its checkpoint barrier comes next."""
        self.write(sorted(self.deferred.pop(group, ())), write)

    def write(self, users: Iterable[str], write: Write) -> None:
        """Write the users' changed values and mark them unchanged."""
        for user in users:
            entry = self.users.get(user)
            if entry is None or not entry.changed:
                continue
            decoded = entry.decoded
            for name in sorted(entry.changed):
                value = decoded[name]
                write(user, name, None if value is None else SLOTS[name].encode(value))
            entry.changed.clear()

    def trim(self) -> None:
        """Drop the least recently used unchanged users beyond ``max_users``."""
        users = self.users
        excess = len(users) - self.max_users
        if excess <= 0:
            return
        unchanged = []
        for user, entry in users.items():
            if not entry.changed:
                unchanged.append(user)
                if len(unchanged) == excess:
                    break
        for user in unchanged:
            del users[user]

    def clear(self) -> None:
        """Forget everything (what a restore does); deferred changes must have been written."""
        assert not any(entry.changed for entry in self.users.values()), "unwritten changes"
        self.users.clear()
        self.deferred.clear()
