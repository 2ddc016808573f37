"""Redis key layout (docs/redis.md). Pure functions so every writer and reader agrees.

Hash tags (the part in braces) choose a key's slot in a Redis Cluster: all keys of one user share the
user's tag, all segment-wide keys share ``{segments}`` and the model summaries share ``{models}``, so
each Lua script and transaction stays within one slot. A single server ignores them.
"""

from __future__ import annotations


def user_profile_key(prefix: str, user_key: str) -> str:
    return f"{prefix}user:{{{user_key}}}:profile"


def users_hll_key(prefix: str) -> str:
    return f"{prefix}stats:users"


def user_profile_pattern(prefix: str) -> str:
    return f"{prefix}user:*:profile"


def user_features_key(prefix: str, user_key: str) -> str:
    return f"{prefix}user:{{{user_key}}}:features"


def user_features_pattern(prefix: str) -> str:
    return f"{prefix}user:*:features"


def user_segments_key(prefix: str, user_key: str) -> str:
    """Hash: segment id -> entry time (ms), plus ``_seq``, the last applied change of the user."""
    return f"{prefix}user:{{{user_key}}}:segments"


def segment_members_key(prefix: str, segment: str) -> str:
    """Sorted set of user keys, scored by entry time."""
    return f"{prefix}{{segments}}:members:{segment}"


def segment_counts_key(prefix: str) -> str:
    """Hash: segment id -> current member count."""
    return f"{prefix}{{segments}}:counts"


def segment_changes_key(prefix: str) -> str:
    """Capped stream of recent segment changes (for dashboards)."""
    return f"{prefix}{{segments}}:changes"


def rules_key(prefix: str) -> str:
    """Hash: rule id -> the rule's current definition, version and status (JSON)."""
    return f"{prefix}rules"


def rule_instances_key(prefix: str) -> str:
    """Hash: parallel instance index -> fingerprint of the rule set it runs (all equal once a command applied)."""
    return f"{prefix}rules:instances"


def user_recs_key(prefix: str, user_key: str) -> str:
    """Sorted set: recommended item -> blended score (the current list; TTL ``recommendations.redis_ttl_s``)."""
    return f"{prefix}user:{{{user_key}}}:recs"


def user_recs_info_key(prefix: str, user_key: str) -> str:
    """Hash: ``version``, ``ts``, ``suppressed`` and ``items`` (JSON list of {item, score, reasons})."""
    return f"{prefix}user:{{{user_key}}}:recs:info"


def user_model_key(prefix: str, user_key: str) -> str:
    """Hash: the user's latest model scores: ``version`` (guard), ``model_version``, ``cluster``, ``intent``, ``ts``."""
    return f"{prefix}user:{{{user_key}}}:model"


def models_current_key(prefix: str) -> str:
    """Hash: the newest snapshot: ``version``, ``lineage``, ``ts``, ``cause``, ``bytes`` and progressive
    validation (``intent_auc``, ``intent_log_loss``, ``examples``)."""
    return f"{prefix}{{models}}:current"


def models_clusters_key(prefix: str) -> str:
    """Hash: cluster id -> JSON {"description", "share"} of the newest snapshot."""
    return f"{prefix}{{models}}:clusters"


def models_drift_key(prefix: str) -> str:
    """Capped stream of drift events, field ``drift`` = the drift event JSON."""
    return f"{prefix}{{models}}:drift"


def deadletter_counts_key(prefix: str) -> str:
    """Hash: dead-letter reason -> number of records sent to the dead-letter topic for it."""
    return f"{prefix}deadletters:counts"


def models_instances_key(prefix: str) -> str:
    """Hash: parallel user-state instance index -> ``<lineage>:<version>`` of the snapshot it scores with."""
    return f"{prefix}{{models}}:instances"


def experiment_metrics_key(prefix: str, experiment_id: str) -> str:
    """String: the latest ``experiments.metrics`` record (JSON) of one experiment (docs/experiments.md)."""
    return f"{prefix}experiment:{experiment_id}:metrics"


def population_key(prefix: str, metric: str) -> str:
    """Hash: parallel instance index -> its users' current values of one R/F/M metric (connectors/population.py)."""
    return f"{prefix}population:{metric}"


#: Every key of one user (what an erasure or retention deletes).
USER_KEYS = (user_profile_key, user_features_key, user_segments_key, user_recs_key, user_recs_info_key, user_model_key)


def layout_patterns(prefix: str) -> tuple[str, ...]:
    """SCAN patterns of every key the job writes (docs/redis.md): all a cleanup may ever delete.

    Built from the key functions themselves, so the layout and its cleanup cannot drift apart; the
    prefix is plain text (the settings allow no glob characters in it).
    """
    global_keys = (users_hll_key, segment_counts_key, segment_changes_key, rules_key, rule_instances_key,
                   models_current_key, models_clusters_key, models_drift_key, models_instances_key,
                   deadletter_counts_key)
    return (*(key(prefix, "*") for key in USER_KEYS), segment_members_key(prefix, "*"), population_key(prefix, "*"),
            experiment_metrics_key(prefix, "*"),
            *(key(prefix) for key in global_keys))
