"""One way to open a Redis client, for one server or a Redis Cluster (``redis.cluster``).

Every writer and reader of the job's keys connects here, so none of them can forget cluster mode.
In a cluster the URL names any one node: the client asks it for the slot map and sends each command
to the node holding its key's slot. Commands that touch several keys must keep them in one slot; the
key layout's hash tags do that (``connectors/redis_keys.py``).
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from personalize.settings import RedisSettings


def connect(settings: RedisSettings, **options: Any) -> redis.Redis:
    """A client of the configured Redis (``options`` as redis-py takes them: timeouts, decode_responses)."""
    if settings.cluster:
        # The cluster client offers the same commands; typed as the single-server one for its callers.
        return cast(redis.Redis, RedisCluster.from_url(settings.url, **options))
    return redis.Redis.from_url(settings.url, **options)


def consistent_pipeline(client: redis.Redis, settings: RedisSettings) -> Any:
    """A pipeline whose reads form one consistent cut (``MULTI``) on a single server; in a cluster, where a
    transaction cannot span slots, a plain pipeline (the reads may straddle a concurrent write)."""
    return client.pipeline(transaction=not settings.cluster)
