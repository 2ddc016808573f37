"""State descriptors with their TTLs. Names are part of savepoint compatibility: never rename."""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.time import Duration, Time
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from state.slots import EXPERIMENT_STATE, PUBLISHED_RECS_STATE, StateSlot

#: Broadcast state: rule id -> the RuleEntry JSON of the latest applied command (the same on every instance).
RULE_CATALOG = MapStateDescriptor("rule-catalog-v1", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
#: Broadcast state: ``current`` -> the pickled ModelSnapshot the instance scores with.
MODEL_SNAPSHOT = MapStateDescriptor("model-snapshot-v1", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
#: The recommender's broadcast state: experiment id -> its entry (definition and status) after the commands.
EXPERIMENT_CATALOG = MapStateDescriptor("experiment-catalog-v1", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
MODEL_SNAPSHOT_KEY = "current"


#: Stands in for RocksDB's periodic compaction time. PyFlink 2.0.2 builds its default as a Java
#: ``Duration`` through the Py4J gateway, which task managers of a real cluster do not have (opening
#: the state fails with FileNotFoundError starting one), and never passes the value to Java anyway:
#: Java keeps its own default (30 days). Any truthy value skips the gateway call; so does not
#: asking for the background cleanup defaults (which PyFlink builds eagerly), hence the explicit
#: compaction-filter cleanup below.
_JAVA_DEFAULT_COMPACTION_PERIOD = Duration(None)
_COMPACTION_QUERY_EVERY = 1000


def ttl_config(ttl_ms: int) -> StateTtlConfig:
    """Processing-time TTL refreshed on every write (Flink TTL cannot follow event time).

    PyFlink 2.0.2 still needs ``Time`` here; a ``Duration`` fails at run time. Expired
    entries are dropped by RocksDB compaction (and never returned before).
    """
    return (
        StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_in_rocksdb_compact_filter(_COMPACTION_QUERY_EVERY, _JAVA_DEFAULT_COMPACTION_PERIOD)
        .build()
    )


def _bytes_state(name: str, ttl_ms: int) -> ValueStateDescriptor:
    """A codec's bytes, stored as a pickled ``bytes`` object.

    Not ``PRIMITIVE_ARRAY(BYTE())``: in thread mode PyFlink 2.0.2 fails reading such a value
    state ("'NoneType' object is not iterable"); pickling a ``bytes`` object adds a few bytes.
    """
    descriptor = ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY())
    descriptor.enable_time_to_live(ttl_config(ttl_ms))
    return descriptor


def user_value(slot: StateSlot, ttl_ms: int) -> ValueStateDescriptor:
    """One of the user's values (``state/slots.py``), with its TTL."""
    return _bytes_state(slot.state_name, ttl_ms)


#: Micro-batched user operator (``job.micro_batch_ms``), keyed by shard: wake-up time -> its users (JSON).
USER_WAKEUPS = MapStateDescriptor("user-wakeups-v1", Types.LONG(), Types.PICKLED_BYTE_ARRAY())


def by_user(descriptor: ValueStateDescriptor) -> MapStateDescriptor:
    """A user value's state when users share a shard key: user -> bytes, with the value's TTL per entry.

    Named apart from the per-user value, so a savepoint of one mode never restores into the other.
    """
    shared = MapStateDescriptor(f"{descriptor.get_name()}-by-user", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
    ttl = descriptor._ttl_config  # PyFlink keeps it there and has no getter
    if ttl is not None:
        shared.enable_time_to_live(ttl)
    return shared


def global_object_state(name: str) -> ValueStateDescriptor:
    """A global model (item model, trainer) as one pickled object under a constant key.

    PyFlink (thread mode) pickles a value at every ``update``: the job writes these rarely and logs
    the inputs in between (:func:`global_object_log`).
    """
    return ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY())


def global_object_log(name: str) -> ListStateDescriptor:
    """The inputs a global object learned since it was last written (its write-ahead log), as bytes.

    Pickled like every Python state: PyFlink's thread mode hands a ``PRIMITIVE_ARRAY(BYTE)`` list
    element to Java as an object array, which fails the checkpoint (ClassCastException).
    """
    return ListStateDescriptor(f"{name}-log", Types.PICKLED_BYTE_ARRAY())


ITEM_MODEL_STATE = "item-model-v2"  # v2: counts on the interaction clock
TRAINER_STATE = "model-trainer-v1"


def experiment_state(ttl_ms: int) -> MapStateDescriptor:
    """User key -> the user's experiment state (arms, recent exposures; ``state.codecs.encode_experiments``)."""
    descriptor = MapStateDescriptor(EXPERIMENT_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
    descriptor.enable_time_to_live(ttl_config(ttl_ms))
    return descriptor


def experiment_counts_state() -> ValueStateDescriptor:
    """An experiment's counters by arm, summed from every recommender shard (``state.codecs.encode_arm_counts``)."""
    return ValueStateDescriptor("experiment-counts-v1", Types.PICKLED_BYTE_ARRAY())


def published_recs_state(ttl_ms: int) -> MapStateDescriptor:
    """User key -> (seq, item ids) of the list last published for the user."""
    descriptor = MapStateDescriptor(PUBLISHED_RECS_STATE, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
    descriptor.enable_time_to_live(ttl_config(ttl_ms))
    return descriptor
