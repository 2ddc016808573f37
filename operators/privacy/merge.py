"""Merge an anonymous visitor's state into the known user's (identity stitching, step 3).

Every state type of the user operator has a merge: profile, features, rule facts, pending model
examples and recommendation state. What the merge does *not* carry over, on purpose:

- segment memberships: they are re-derived from the merged facts (``RuleState.fingerprint`` is
  reset, so the next evaluation re-checks every rule) and enters are emitted at the known key;
  the anonymous key exited its segments at the handover. Copying memberships would put the user
  in segments no change record ever announced.
- R/F/M population contributions: the anonymous key withdrew its own at the handover
  (``FeatureOperator.forget``); the known user's moves to the merged value at the next scoring.
- model cluster membership and intent score: the known user's are kept; the next scoring of the
  merged vector updates them.

Each merge accepts either side missing. When the known side is missing, counters start at
``counter_base`` (``ConsentState.counter_base``), as any fresh state of the user would.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from operators.dedup import RecentIds
from operators.features.affinity import CategoryAffinity, decay
from operators.features.operator import FeatureOperator, UserFeatures
from operators.features.rfm import PurchaseHistory
from operators.features.sessions import Session, SessionTracker
from operators.features.windows import SlidingCount
from operators.models.intent import PendingExamples
from operators.models.user import UserModelState
from operators.profile import UserProfile
from operators.recs.config import RecConfig
from operators.recs.user import UserRecState
from operators.rules.engine import RuleState
from operators.rules.signals import MAX_ENTITIES, Retention, Signal, SignalLog

K = TypeVar("K")


@dataclass
class UserStates:
    """All keyed state of one user key, decoded (stored and loaded through ``state/slots.py``)."""

    profile: UserProfile | None = None
    features: UserFeatures | None = None
    rules: RuleState | None = None
    models: UserModelState | None = None
    recs: UserRecState | None = None


def _sum(a: SlidingCount, b: SlidingCount) -> SlidingCount:
    buckets = dict(a.buckets)
    for bucket, value in b.buckets.items():
        buckets[bucket] = buckets.get(bucket, 0) + value
    return SlidingCount(buckets=buckets)


def _sum_all(a: Mapping[K, SlidingCount], b: Mapping[K, SlidingCount]) -> dict[K, SlidingCount]:
    return {key: _sum(a.get(key, SlidingCount()), b.get(key, SlidingCount())) for key in {*a, *b}}


def _newest(counters: dict[str, SlidingCount], limit: int) -> dict[str, SlidingCount]:
    """At most ``limit`` counters, the most recently counted kept (as the feature operator evicts)."""
    ranked = sorted(counters, key=lambda k: (-max(counters[k].buckets, default=0), k))
    return {key: counters[key] for key in sorted(ranked[:limit])}


def merge_affinity(a: CategoryAffinity, b: CategoryAffinity, half_life_ms: int,
                   max_categories: int) -> CategoryAffinity:
    """Both decayed to the newer time and added (exact for exponential decay); the weakest beyond the bound go."""
    scores: dict[str, tuple[float, int]] = {}
    for category in {*a.scores, *b.scores}:
        parts = [s[category] for s in (a.scores, b.scores) if category in s]
        as_of = max(ts for _, ts in parts)
        scores[category] = (sum(decay(score, as_of - ts, half_life_ms) for score, ts in parts), as_of)
    merged = CategoryAffinity(scores=scores)
    if len(scores) > max_categories:
        reference = max(ts for _, ts in scores.values())
        ranked = sorted(scores, key=lambda c: (-merged.at(c, reference, half_life_ms), c))
        merged.scores = {c: scores[c] for c in sorted(ranked[:max_categories])}
    return merged


def merge_profiles(known: UserProfile | None, anonymous: UserProfile | None, max_ids: int,
                   counter_base: int = 0) -> UserProfile | None:
    """Counts add up, first/last seen widen, recent event ids unite (newest ``max_ids`` kept, so a
    re-send of an anonymous event is still a duplicate). ``seq`` stays the known user's: processing
    the identify event next raises it, which the Redis version guard needs."""
    if anonymous is None:
        return known
    base = known or UserProfile(first_seen=anonymous.first_seen, last_seen=anonymous.last_seen, seq=counter_base)
    counts = dict(base.counts)
    for event_type, count in anonymous.counts.items():
        counts[event_type] = counts.get(event_type, 0) + count
    seen = {**anonymous.recent.seen, **base.recent.seen}
    newest = sorted(seen, key=lambda fp: (-seen[fp], fp))[:max_ids]
    return UserProfile(counts=counts, first_seen=min(base.first_seen, anonymous.first_seen),
                       last_seen=max(base.last_seen, anonymous.last_seen), seq=base.seq,
                       recent=RecentIds(seen={fp: seen[fp] for fp in newest}))


def _merge_sessions(a: SessionTracker, b: SessionTracker, gap_ms: int) -> tuple[SessionTracker, Session | None]:
    """One tracker, and the session that the merge closed (two open sessions further apart than the
    gap: the older is over). Overlapping open sessions are one visit (login mid-session): united."""
    closed = None
    current = a.current or b.current
    if a.current is not None and b.current is not None:
        older, newer = sorted((a.current, b.current), key=lambda s: (s.end, s.start))
        if older.end + gap_ms >= newer.start:
            current = Session(min(older.start, newer.start), newer.end, older.depth + newer.depth,
                              older.carted or newer.carted, older.purchased or newer.purchased)
        else:
            closed, current = older, newer
    current = copy.copy(current)
    ends = [t for t in (a.previous_end, b.previous_end, closed.end if closed else None) if t is not None]
    abandoned = max((a, b), key=lambda t: -1 if t.abandoned_at is None else t.abandoned_at)
    return SessionTracker(current=current, previous_end=max(ends, default=None),
                          abandoned_at=abandoned.abandoned_at, returned_at=abandoned.returned_at,
                          out_of_order=a.out_of_order + b.out_of_order, timer_at=None), closed


def merge_features(known: UserFeatures | None, anonymous: UserFeatures | None, operator: FeatureOperator,
                   counter_base: int = 0) -> UserFeatures | None:
    """Window counts add bucket by bucket (both keys use the same buckets), item and category counters
    unite within their bounds, sessions join, affinity adds decayed. ``timer_at`` is cleared so the
    operator registers the merged session's close timer; the emission memory stays the known user's."""
    if anonymous is None:
        return known
    config = operator.config
    base = known or UserFeatures(version=counter_base)
    sessions, closed = _merge_sessions(base.sessions, anonymous.sessions, config.session_gap_ms)
    reference = max(base.reference_ts, anonymous.reference_ts)
    merged = UserFeatures(
        reference_ts=reference,
        counts={t: _sum_all(base.counts.get(t, {}), anonymous.counts.get(t, {}))
                for t in {*base.counts, *anonymous.counts}},
        items=_newest(_sum_all(base.items, anonymous.items), config.max_items),
        categories=_newest(_sum_all(base.categories, anonymous.categories), config.max_categories),
        sessions=sessions,
        session_starts=_sum(base.session_starts, anonymous.session_starts),
        session_lengths=_sum(base.session_lengths, anonymous.session_lengths),
        session_depths=_sum(base.session_depths, anonymous.session_depths),
        purchases=PurchaseHistory(
            count=_sum(base.purchases.count, anonymous.purchases.count),
            spend=_sum(base.purchases.spend, anonymous.purchases.spend),
            last_purchase_ts=max((t for t in (base.purchases.last_purchase_ts, anonymous.purchases.last_purchase_ts)
                                  if t is not None), default=None),
            scored=base.purchases.scored),
        affinity=merge_affinity(base.affinity, anonymous.affinity, config.affinity_half_life_ms,
                                config.max_categories),
        version=base.version, emitted=dict(base.emitted), emitted_at=base.emitted_at,
    )
    if closed is not None:
        merged.session_lengths.add(config.session_window, closed.start, reference, closed.length_ms)
        merged.session_depths.add(config.session_window, closed.start, reference, closed.depth)
    operator.prune(merged)
    return merged


def _merge_log(a: SignalLog, b: SignalLog, retention: Retention | None) -> SignalLog:
    """Timestamps unite per entity; beyond the signal's ``keep`` the oldest go and raise ``floor``."""
    floor = max(a.floor, b.floor)
    entities: dict[str, list[int]] = {}
    for entity in {*a.entities, *b.entities}:
        times = sorted(a.entities.get(entity, []) + b.entities.get(entity, []))
        if retention is not None and len(times) > retention.keep:
            floor = max(floor, times[-retention.keep - 1])
            times = times[-retention.keep:]
        entities[entity] = times
    if len(entities) > MAX_ENTITIES:
        stalest_first = sorted(entities, key=lambda name: (entities[name][-1], name))
        for name in stalest_first[: len(entities) - MAX_ENTITIES]:
            del entities[name]
    return SignalLog(entities=entities, floor=floor)


def merge_rule_states(known: RuleState | None, anonymous: RuleState | None,
                      signals: Mapping[str, tuple[Signal, Retention]],
                      counter_base: int = 0) -> RuleState | None:
    """Signal logs unite, attributes merge (the known user's win: they are the account's), memberships
    stay the known user's and ``fingerprint`` is reset so the next step re-evaluates every rule on the
    merged facts. ``signals`` is ``RuleSet.signals`` (how many timestamps each signal keeps)."""
    if anonymous is None:
        return known
    base = known or RuleState(seq=counter_base)
    logs = {key: _merge_log(base.logs.get(key, SignalLog()), anonymous.logs.get(key, SignalLog()),
                            signals[key][1] if key in signals else None)
            for key in {*base.logs, *anonymous.logs}}
    first_seen = min((t for t in (base.first_seen, anonymous.first_seen) if t), default=0)
    wakes = [w for w in (base.wake, anonymous.wake) if w is not None]
    return RuleState(logs=logs, attributes={**anonymous.attributes, **base.attributes},
                     features=dict(base.features), members=dict(base.members), waiting=dict(base.waiting),
                     now=max(base.now, anonymous.now), first_seen=first_seen, seq=base.seq,
                     wake=min(wakes, default=None), fingerprint=0)


def merge_model_states(known: UserModelState | None, anonymous: UserModelState | None,
                       max_pending: int) -> UserModelState | None:
    """Pending intent examples unite (newest ``max_pending`` kept; evicted ones count as dropped):
    what the anonymous visitor did before a later purchase is a valid example. Membership, intent and
    the input a newer snapshot re-scores stay the known user's."""
    if anonymous is None:
        return known
    base = known or UserModelState()
    examples = [*base.pending.examples]
    for example in anonymous.pending.examples:
        bisect.insort(examples, example, key=lambda item: item[0])
    overflow = max(len(examples) - max_pending, 0)
    return UserModelState(
        pending=PendingExamples(examples[overflow:], base.pending.dropped + anonymous.pending.dropped + overflow),
        membership=copy.copy(base.membership), intent=base.intent, version=base.version, behaviour=base.behaviour,
        vector_version=base.vector_version, rescores=base.rescores)


def _by_time(a: Mapping[str, int], b: Mapping[str, int], limit: int) -> dict[str, int]:
    """Item -> time maps united (newest time per item), oldest first, newest ``limit`` kept."""
    times = dict(a)
    for item, ts in b.items():
        times[item] = max(ts, times.get(item, ts))
    ordered = sorted(times, key=lambda item: (times[item], item))
    return {item: times[item] for item in ordered[max(len(ordered) - limit, 0):]}


def merge_rec_states(known: UserRecState | None, anonymous: UserRecState | None,
                     config: RecConfig) -> UserRecState | None:
    """The cart survives the login: carts unite (an item bought later, by either key, leaves it),
    purchases unite, the anonymous visitor's recent items come before the known user's (position
    counts in queries), affinity adds decayed, an open checkout stays open unless a purchase followed.
    Experiment arms: the known user's wins where they have one, else the visitor keeps theirs."""
    if anonymous is None:
        return known
    base = known or UserRecState()
    purchased = _by_time(base.purchased, anonymous.purchased, config.max_purchased)
    cart = {item: ts for item, ts in _by_time(base.cart, anonymous.cart, config.max_cart).items()
            if purchased.get(item, -1) < ts}
    recent = {item: weight for item, weight in anonymous.recent.items() if item not in base.recent}
    for item, weight in base.recent.items():
        recent[item] = max(weight, anonymous.recent.get(item, 0.0))
    while len(recent) > config.recent_items:
        del recent[next(iter(recent))]
    checkout = max(base.checkout_ts, anonymous.checkout_ts)
    if checkout and max(purchased.values(), default=-1) >= checkout:
        checkout = 0
    return UserRecState(recent=recent, cart=cart, purchased=purchased,
                        affinity=merge_affinity(base.affinity, anonymous.affinity, config.affinity_half_life_ms,
                                                config.max_categories),
                        checkout_ts=checkout, reference_ts=max(base.reference_ts, anonymous.reference_ts),
                        arms={**anonymous.arms, **base.arms})


@dataclass(frozen=True)
class StateMerger:
    """Merges every state of a handover into the known user's; built once from the job's configs."""

    features: FeatureOperator
    recs: RecConfig = field(default_factory=RecConfig)
    signals: Mapping[str, tuple[Signal, Retention]] = field(default_factory=dict)
    """``RuleSet.signals`` of the rule set in use (empty: no rules)."""
    dedup_max_ids: int = 128
    intent_max_pending: int = 16

    def merge(self, known: UserStates, anonymous: UserStates, counter_base: int = 0) -> UserStates:
        return UserStates(
            profile=merge_profiles(known.profile, anonymous.profile, self.dedup_max_ids, counter_base),
            features=merge_features(known.features, anonymous.features, self.features, counter_base),
            rules=merge_rule_states(known.rules, anonymous.rules, self.signals, counter_base),
            models=merge_model_states(known.models, anonymous.models, self.intent_max_pending),
            recs=merge_rec_states(known.recs, anonymous.recs, self.recs),
        )
