"""Population histograms shared by the parallel instances of the keyed operator, through Redis.

Each instance owns a disjoint set of users (state is keyed by user), keeps a histogram of their
current values and overwrites its own field of ``{prefix}population:{metric}``; merging every
field gives the whole population. Overwriting keeps replays idempotent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import redis

from operators.quantiles import PopulationHistogram


def population_key(prefix: str, metric: str) -> str:
    return f"{prefix}population:{metric}"


class SharedPopulation:
    """One operator instance's share of the population distributions, synchronised through Redis."""

    def __init__(self, client: redis.Redis, key_prefix: str, metrics: Sequence[str], instance: int,
                 refresh_interval_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.metrics = tuple(metrics)
        self.instance = instance
        self.refresh_interval_ms = refresh_interval_ms
        self.clock = clock
        self.local = {metric: PopulationHistogram() for metric in self.metrics}
        self.others: dict[str, list[PopulationHistogram]] = {metric: [] for metric in self.metrics}
        self.merged: dict[str, PopulationHistogram] = dict(self.local)
        self.last_sync: float | None = None

    def restore(self) -> None:
        """Reload this instance's last published histograms (after a restart)."""
        pipe = self.client.pipeline(transaction=False)
        for metric in self.metrics:
            pipe.hget(population_key(self.key_prefix, metric), str(self.instance))
        for metric, raw in zip(self.metrics, pipe.execute(), strict=True):
            if raw:
                self.local[metric] = PopulationHistogram.from_dict(json.loads(raw))
        self._merge()

    def move(self, metric: str, old: float | None, new: float | None) -> None:
        self.local[metric].move(old, new)
        self.maybe_sync()

    def maybe_sync(self) -> bool:
        now = self.clock()
        if self.last_sync is not None and (now - self.last_sync) * 1000 < self.refresh_interval_ms:
            return False
        self.sync()
        return True

    def sync(self) -> None:
        """Publish this instance's histograms and merge everybody's, in one pipeline."""
        self.last_sync = self.clock()
        pipe = self.client.pipeline(transaction=False)
        mine = str(self.instance)
        for metric in self.metrics:
            key = population_key(self.key_prefix, metric)
            pipe.hset(key, mine, json.dumps(self.local[metric].to_dict(), separators=(",", ":")))
            pipe.hgetall(key)
        replies = pipe.execute()
        for metric, fields in zip(self.metrics, replies[1::2], strict=True):
            self.others[metric] = [PopulationHistogram.from_dict(json.loads(raw))
                                   for field, raw in fields.items() if field.decode() != mine]
        self._merge()

    def _merge(self) -> None:
        self.merged = {metric: self.local[metric].merged(self.others[metric]) for metric in self.metrics}

    def score(self, metric: str, value: float) -> int:
        """Score against everybody, as of the last sync (at most ``refresh_interval_ms`` old)."""
        return self.merged[metric].score(value)
