"""Population histograms shared by the parallel instances of the keyed operator, through Redis.

Each instance owns a disjoint set of users (state is keyed by user), keeps a histogram of their
current values and overwrites its own field of ``{prefix}population:{metric}``; merging every
field gives the whole population. Overwriting keeps replays idempotent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import redis

from connectors.redis_keys import population_key
from operators.quantiles import PopulationHistogram

log = logging.getLogger(__name__)


class SharedPopulation:
    """One operator instance's share of the population distributions, synchronised through Redis.

    :meth:`move` only touches this instance's histograms; :meth:`score` first syncs when
    ``refresh_interval_ms`` has passed, so every score uses a view at most that old (plus one Redis
    round trip per interval, never per event).
    """

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
        # The same objects as ``local`` until the first sync, so local moves count straight away.
        self.merged: dict[str, PopulationHistogram] = dict(self.local)
        self.last_sync: float | None = None

    def restore(self) -> None:
        """Reload this instance's last published histograms (after a restart), and everybody else's."""
        pipe = self.client.pipeline(transaction=False)
        for metric in self.metrics:
            pipe.hgetall(population_key(self.key_prefix, metric))
        self._read(pipe.execute(), restore=True)

    def move(self, metric: str, old: float | None, new: float | None) -> None:
        self.local[metric].move(old, new)

    def maybe_sync(self) -> bool:
        now = self.clock()
        if self.last_sync is not None and (now - self.last_sync) * 1000 < self.refresh_interval_ms:
            return False
        self.sync()
        return True

    def sync(self) -> None:
        """Publish this instance's histograms and merge everybody's, in one pipeline.

        When Redis is unreachable, scoring goes on against the last view and the next interval
        tries again: an outage must not fail the job, and the overwrite publishes everything then.
        """
        self.last_sync = self.clock()
        pipe = self.client.pipeline(transaction=False)
        for metric in self.metrics:
            key = population_key(self.key_prefix, metric)
            pipe.hset(key, str(self.instance), json.dumps(self.local[metric].to_dict(), separators=(",", ":")))
            pipe.hgetall(key)
        try:
            replies = pipe.execute()
        except redis.RedisError as exc:  # scores go on against the last view: an outage never fails the job
            log.warning("population sync skipped, Redis did not answer (%r)", exc)
            return
        self._read(replies[1::2], restore=False)

    def _read(self, replies: list[dict[bytes | str, bytes | str]], restore: bool) -> None:
        mine = {str(self.instance), str(self.instance).encode()}  # with or without decode_responses
        for metric, fields in zip(self.metrics, replies, strict=True):
            others = []
            for field, raw in fields.items():
                if field not in mine:
                    others.append(PopulationHistogram.from_dict(json.loads(raw)))
                elif restore:
                    self.local[metric] = PopulationHistogram.from_dict(json.loads(raw))
            self.others[metric] = others
        self.merged = {metric: self.local[metric].merged(self.others[metric]) for metric in self.metrics}

    def score(self, metric: str, value: float) -> int:
        """Score against everybody, as of the last sync (at most ``refresh_interval_ms`` old)."""
        self.maybe_sync()
        return self.merged[metric].score(value)
