"""The per-user core of the job: one user's event, or one of their wake-ups, in; a :class:`Step` out.

Every step a user's event goes through lives here, in order: identity routing and consent, retention,
dedup and profile, lateness, session closes and features, the user's part of the models, segment rules
and the user's recommendation state. The core reads and writes the user's values through
:class:`UserValues` (decoded; the caller stores what changed) and returns everything else it decided:
the records to emit, the Redis writes to stage, the wake-ups to set, and the messages for the trainer
and the recommender. It imports no Flink: the Flink functions (``jobs/adapters.py``, ``jobs/shards.py``)
load, call, store and emit, and the local runner (``jobs/local_runner.py``) drives the same core for
benchmarks, offline evaluation and tests.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol

from operators.deadletter import late_record
from operators.events import Event
from operators.experiments.attribution import VIEW_TYPE
from operators.experiments.serving import ExperimentPolicy
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.operator import FeatureOperator, FeatureVector, UserFeatures
from operators.models.config import ModelConfig
from operators.models.training import ModelScorer
from operators.models.user import Rescored, UserModels, UserModelState
from operators.privacy.consent import COUNTER_STRIDE, ConsentPolicy, ConsentState
from operators.privacy.erasure import ErasureSettings, Held, plan_erasure
from operators.privacy.identity import (
    ERASE_TYPE,
    HANDOVER_TYPE,
    ErasureCommand,
    Handover,
    IdentityState,
    Route,
    forwarded,
    link,
    merge_record,
    route,
)
from operators.privacy.merge import StateMerger, UserStates
from operators.profile import ProfileOperator, ProfileUpdate, UserProfile
from operators.recs.config import RecConfig
from operators.recs.serving import RecRequest
from operators.recs.user import UserRecState
from operators.rules.engine import RuleState, SegmentChange, SegmentEngine

#: Routes (``topic`` values) of the internal records: pickled training inputs for the trainer, pickled
#: recommendation requests for the recommender; the receiver is the record's key.
TRAINING_ROUTE = "__training__"
RECS_ROUTE = "__recommend__"
#: Key of the single trainer (the whole stream of training inputs goes to one place).
TRAINER_KEY = "trainer"
#: Events that change a user's list without teaching the model (others do it through an interaction).
LIST_EVENTS = frozenset({"checkout_start", "remove_from_cart"})
#: The user's values an erasure, a retention or a merge moves or clears: the fields of ``UserStates``, which
#: ``state/slots.py`` stores (a test keeps its table in step with them).
USER_VALUES = tuple(value.name for value in fields(UserStates))


class UserValues(Protocol):
    """The current user's keyed values by logical name (``state/slots.py``), decoded on first read.

    What the core puts or clears during a call, the caller stores after it.
    """

    def get(self, name: str) -> Any | None: ...
    def put(self, name: str, value: Any) -> None: ...
    def clear(self, names: Iterable[str]) -> None: ...
    def stored(self, names: Iterable[str]) -> dict[str, bytes]:
        """The values' stored bytes by name, absent ones left out (what a handover ships)."""
        ...
    def decoded(self, stored: Mapping[str, bytes]) -> UserStates:
        """Another key's stored bytes (a handover's), decoded."""
        ...


class StageProfile(NamedTuple):
    update: ProfileUpdate


class StageFeatures(NamedTuple):
    vector: FeatureVector


class StageModelScores(NamedTuple):
    user_key: str
    version: int
    fields: list[Any]


class StageSegmentChange(NamedTuple):
    change: SegmentChange
    record: bytes


class StageForget(NamedTuple):
    """Delete the user's Redis hashes (retention, a merge into another key)."""

    user_key: str


class StageErase(NamedTuple):
    """Forget, and remove the user's entries from the segment-change stream."""

    user_key: str


#: What the core asks of the Redis writer, in order (``connectors.redis_writer.UserStateSink``).
RedisWrite = StageProfile | StageFeatures | StageModelScores | StageSegmentChange | StageForget | StageErase


class Record(NamedTuple):
    """An output record: key, value (None: a tombstone) and topic."""

    key: bytes
    value: bytes | None
    topic: str


@dataclass
class Step:
    """What one call decided, for the caller to carry out in this order: Redis writes, wake-ups, records
    (late ones to the late output), messages to the trainer and the recommender."""

    records: list[Record] = field(default_factory=list)
    late: list[Record] = field(default_factory=list)
    redis: list[RedisWrite] = field(default_factory=list)
    wakeups: list[int] = field(default_factory=list)
    """Event times at which to call :meth:`UserCore.on_timer` for this user (a time set twice wakes once)."""
    sends: list[tuple[str, str, Any]] = field(default_factory=list)
    """(route, receiver, message) for the trainer or a recommender shard."""
    unconsented: int = 0
    """Events not personalized for lack of consent."""
    erasures: int = 0

    def emit(self, key: str, value: bytes | None, topic: str) -> None:
        self.records.append(Record(key.encode("utf-8"), value, topic))


@dataclass(frozen=True)
class IdentitySettings:
    """Identity stitching (docs/privacy.md): the internal topic that carries handovers, forwarded events
    and erasure cascades to another key, and the merges output."""

    internal_topic: str
    merges_topic: str
    max_links: int


@dataclass(frozen=True)
class CoreSettings:
    """What the core does for each user, and where its records go."""

    profile: ProfileOperator
    features: FeatureConfig
    features_enabled: bool
    topics: Mapping[str, str]
    """Output topic per record kind: profiles, features, late, segments."""
    allowed_lateness_ms: int
    models: ModelConfig | None = None
    recs: RecConfig | None = None
    rec_shards: int = 1
    consent: ConsentPolicy | None = None
    """Consent and erasure; None: every event is personalized."""
    identity: IdentitySettings | None = None


def retention_due(features: UserFeatures, config: FeatureConfig) -> int:
    """When an idle user's state goes: the day boundary after ``retention_ms`` of event-time silence
    (one retention timer per user and day of activity, not per event)."""
    retention = features.reference_ts + config.retention_ms
    return retention - retention % DAY_MS + DAY_MS


def shard_of(key: str, shards: int) -> int:
    """The shard of a key (stable across runs, restarts and rescaling)."""
    return zlib.crc32(key.encode("utf-8")) % shards


def rec_shard(user_key: str, shards: int) -> str:
    """The key of the recommender instance a user's requests go to."""
    return str(shard_of(user_key, shards))


class UserCore:
    """The per-user steps. The instance holds what every user shares: the rules and the model snapshot
    in use (the caller loads them from broadcast state), the feature operator with its R/F/M population."""

    def __init__(self, settings: CoreSettings, features: FeatureOperator, erasure: ErasureSettings | None = None,
                 internal: Callable[[Event], bytes] | None = None) -> None:
        if settings.consent is not None and erasure is None:
            raise ValueError("consent needs erasure settings: a withdrawal erases the user")
        self.settings = settings
        self.features = features
        self.erasure = erasure
        self.internal = internal
        """Encodes (and signs) a record for another key's input, through the internal topic."""
        self.user_models = UserModels(settings.models) if settings.models is not None and settings.features_enabled \
            else None
        self.scorer = ModelScorer()
        self.engine: SegmentEngine | None = None
        self.experiments: ExperimentPolicy | None = None
        """The experiments in use (the caller loads them from broadcast state). While one runs, the
        recommender gets each request's event and clients' recommendation views, and segment changes say
        the arm."""
        self.segments_now: tuple[str, ...] = ()
        """The user's segments after the latest rule step (what the recommender's trending lists use)."""

    # --- entry points -------------------------------------------------------------------------------

    def on_event(self, values: UserValues, key: str, event: Event, watermark: int) -> Step:
        """Apply an event of the user ``key``. What a timer would have done before the event's time is done
        first (a user past retention is forgotten, a session past its gap is closed), so the outputs do
        not depend on whether the watermark reached the timer before this event arrived."""
        step = Step()
        settings = self.settings
        # The retention wake-up this key already has (asked for when it last moved), read before a merge
        # can replace the features.
        before: UserFeatures | None = values.get("features") if settings.features_enabled else None
        registered = retention_due(before, settings.features) if before is not None else None
        if settings.consent is not None:
            admitted = self._privacy(values, step, event, key)
            if admitted is None:
                return step
            event = admitted
        features: UserFeatures | None = None
        if settings.features_enabled:
            features = values.get("features")
            if features is not None:
                due = retention_due(features, settings.features)
                if due <= event.ts:
                    self._forget(values, step, event.user_key, features, due)
                    features = registered = None
        stored = values.get("profile")
        profile, update = settings.profile.process(
            stored if stored is not None
            else UserProfile(first_seen=event.ts, last_seen=event.ts, seq=self._counter_base(values)), event)
        if update is None:
            return step
        values.put("profile", profile)
        step.redis.append(StageProfile(update))
        step.emit(update.user_key, update.to_json(), settings.topics["profiles"])
        if not settings.features_enabled and self.engine is None:
            return step
        if event.ts < watermark - settings.allowed_lateness_ms:
            step.late.append(Record(event.user_key.encode("utf-8"), late_record(event), settings.topics["late"]))
            return step
        decision: dict[str, Any] = {}
        rescored: Rescored | None = None
        if settings.features_enabled:
            if features is not None:
                self._close_due_session(step, features, event.user_key, event.ts)
            features, vector = self.features.process(features or UserFeatures(version=self._counter_base(values)),
                                                     event)
            decision = features.decision
            self._after_features(values, step, features, vector, registered)
            if self.user_models is not None:
                purchase = event.ts if event.type == "purchase" else None
                rescored, decision["intent"] = self._models(values, step, event.user_key, vector, purchase, None)
        engine = self.engine
        if engine is not None:
            first_seen = profile.first_seen
            self._segments(values, step, lambda state: engine.observe(state, event, first_seen, decision)
                           + self._model_segment(engine, state, event.user_key, event.ts, rescored))
        if settings.recs is not None:
            self._recommend(values, step, event, profile.seq - profile.seq % COUNTER_STRIDE)
        return step

    def on_timer(self, values: UserValues, user: str, timestamp: int) -> Step:
        """Event time reached ``timestamp`` for the user: retention, a session's close, intent deadlines,
        rule expiries; whatever is due then."""
        step = Step()
        engine = self.engine
        rescored: Rescored | None = None
        features = values.get("features")
        if features is not None:
            registered = retention_due(features, self.settings.features)
            if registered <= timestamp:
                self._forget(values, step, user, features, timestamp)
                return step
            session_timer = features.sessions.timer_at
            vector = None
            if session_timer is not None and session_timer <= timestamp:  # not a rule timer: close the session
                features.sessions.timer_fired(timestamp)
                vector = self.features.close_session(features, user, timestamp)
                self._after_features(values, step, features, vector, registered)
            if self.user_models is not None:  # intent deadlines, and scoring the closed session's vector
                rescored, _ = self._models(values, step, user, vector, None, timestamp)
        if engine is not None and (values.get("rules") is not None or rescored is not None):
            self._segments(values, step, lambda state: engine.advance(state, user, timestamp)
                           + self._model_segment(engine, state, user, timestamp, rescored))
        return step

    # --- privacy ------------------------------------------------------------------------------------

    def _privacy(self, values: UserValues, step: Step, event: Event, key: str) -> Event | None:
        """Identity routing and consent before anything else: the event to process here (a merged
        handover's identify), or None when it was forwarded, handed over, erased or not consented."""
        identity = self.settings.identity
        routed = None
        if identity is not None:
            if event.type == ERASE_TYPE:
                self._cascaded_erasure(values, step, event, key)
                return None
            routed = route(values.get("identity"), event, key)
            if routed.route is Route.FORWARD:  # the anonymous key merged: its events (consent too) count there
                self._send_internal(step, forwarded(event, routed.target))
                return None
        if not self._consent(values, step, event):
            return None
        if routed is not None and routed.route is Route.HANDOVER:
            self._hand_over(values, step, event, key, routed.state, routed.target)
            return None
        if identity is not None and event.type == HANDOVER_TYPE:
            return self._merge(values, step, Handover.from_event(event))
        return event

    def _send_internal(self, step: Step, event: Event) -> None:
        """A record for another key, through the internal topic (read back as input, keyed by ``user_key``)."""
        assert self.settings.identity is not None and self.internal is not None
        step.records.append(Record(event.user_key.encode("utf-8"), self.internal(event),
                                   self.settings.identity.internal_topic))

    def _hand_over(self, values: UserValues, step: Step, identify: Event, key: str, alias: IdentityState | None,
                   target: str) -> None:
        """The anonymous key logs in: its segments exit, its population share goes, its stored state
        travels to the known user and only the alias stays here."""
        stored = values.stored(USER_VALUES)
        self._leave(values, step, key, identify.ts, "merge", values.get("features"), values.get("rules"))
        step.redis.append(StageForget(key))
        assert alias is not None
        values.put("identity", alias)
        self._send_internal(step, Handover(key, target, identify, stored).to_event())

    def _merge(self, values: UserValues, step: Step, handover: Handover) -> Event:
        """Merge an anonymous key's state into this known user's (once: a re-delivered handover is
        recognised by the link), emit the merge event; the identify is then processed as usual."""
        identity_settings = self.settings.identity
        assert identity_settings is not None
        identity: IdentityState | None = values.get("identity")
        if identity is None or handover.source not in identity.linked:
            settings = self.settings
            engine = self.engine
            merger = StateMerger(self.features, settings.recs or RecConfig(), engine.rules.signals if engine else {},
                                 settings.profile.dedup_max_ids,
                                 settings.models.intent_max_pending if settings.models else 16)
            known = UserStates(**{name: values.get(name) for name in USER_VALUES})
            visitor = values.decoded(handover.states)
            merged = merger.merge(known, visitor, self._counter_base(values))
            for name in USER_VALUES:
                value = getattr(merged, name)
                if value is None:
                    values.clear((name,))
                else:
                    values.put(name, value)
            values.put("identity", link(identity, handover.source, handover.identify.ts, identity_settings.max_links))
            carried = tuple(name for name in USER_VALUES if name in handover.states)
            key, record = merge_record(handover, carried)
            step.records.append(Record(key, record, identity_settings.merges_topic))
            self._count_crossovers(step, handover.target, known.recs, visitor.recs, merged.recs, handover.identify)
        return handover.identify

    def _count_crossovers(self, step: Step, user_key: str, known: UserRecState | None, visitor: UserRecState | None,
                          merged: UserRecState | None, identify: Event) -> None:
        """Experiments in which the visitor had another arm than the known user's, which won: a crossover each,
        counted in the known user's arm (docs/experiments.md; contamination to watch, expected small)."""
        if known is None or visitor is None or merged is None or self.settings.recs is None:
            return
        crossed = tuple((experiment, arm) for experiment, arm in sorted(known.arms.items())
                        if visitor.arms.get(experiment, arm) != arm)
        if crossed:
            self._rec_request(step, RecRequest(user_key, identify.event_id, identify.ts, None, merged,
                                               self.segments_now, rank=False, crossed=crossed))

    def _cascaded_erasure(self, values: UserValues, step: Step, event: Event, key: str) -> None:
        """A related key (alias target or linked anonymous key) was erased: the same person, so this
        key erases too and stops personalizing."""
        consent = self.settings.consent
        assert consent is not None
        command = ErasureCommand.from_event(event)
        cascaded = consent.cascaded(values.get("consent"), command.reason, command.ts)
        values.put("consent", cascaded.state)
        self._erase(values, step, key, cascaded.erase, command.ts, cascaded.state.generation, command.source)

    def _consent(self, values: UserValues, step: Step, event: Event) -> bool:
        """Apply a consent change (a withdrawal or an erasure request erases the user at once) and
        decide whether the event may be personalized."""
        policy = self.settings.consent
        assert policy is not None
        consent: ConsentState | None = values.get("consent")
        if event.type == "consent_change":
            changed = policy.apply(consent, event)
            if not changed.stale:
                values.put("consent", changed.state)
            if changed.erase:
                self._erase(values, step, event.user_key, changed.erase, event.ts, changed.state.generation)
                return False
            consent = changed.state
        if not policy.may_personalize(consent, event.ts):
            step.unconsented += 1
            return False
        return True

    def _counter_base(self, values: UserValues) -> int:
        """Where the current user's new counters start: above every id erased before (docs/privacy.md)."""
        if self.settings.consent is None:
            return 0
        consent: ConsentState | None = values.get("consent")
        return consent.counter_base if consent is not None else 0

    def _erase(self, values: UserValues, step: Step, user: str, reason: str, ts: int, generation: int,
               source: str = "") -> None:
        """Erase the user now: exit every segment, clear every keyed state but consent, delete the
        Redis keys and change-stream entries, tombstone the user-keyed topics, confirm (docs/privacy.md)."""
        erasure = self.erasure
        assert erasure is not None
        rules: RuleState | None = values.get("rules")
        identity: IdentityState | None = values.get("identity") if self.settings.identity is not None else None
        held = Held(segments=tuple(rules.members) if rules is not None else (),
                    related=identity.related_keys() if identity is not None else (),
                    recs=values.get("recs") is not None)
        plan = plan_erasure(user, reason, ts, generation, held, erasure, source)
        self._leave(values, step, user, ts, "erasure", values.get("features"), rules, erase=True)
        if self.settings.identity is not None:
            values.clear(("identity",))
            for command in plan.cascade:  # one hop: a cascade never returns to its source
                self._send_internal(step, command.to_event())
        step.redis.append(StageErase(user))
        for tombstone in plan.tombstones:
            step.records.append(Record(tombstone.key, None, tombstone.topic))
        step.records.append(Record(plan.confirmation.key(), plan.confirmation.to_json(), erasure.confirmation_topic))
        step.erasures += 1

    # --- the user's steps ---------------------------------------------------------------------------

    def _models(self, values: UserValues, step: Step, user: str, vector: FeatureVector | None,
                purchase_ts: int | None, now: int | None) -> tuple[Rescored | None, float | None]:
        """Settle intent examples (a purchase at ``purchase_ts``: positives; a timer at ``now``:
        negatives, and a re-score with a newer snapshot at an intent deadline), send the trainer its
        inputs, score a new vector: (a membership change, the intent)."""
        models = self.user_models
        assert models is not None
        state: UserModelState | None = values.get("models")
        if state is None and vector is None:
            return None, None
        state = state or UserModelState()
        deadline_before = models.deadline(state)
        inputs = models.purchase(state, purchase_ts) if purchase_ts is not None else []
        rescored = None
        if now is not None:
            inputs += models.expire(state, now)
            if vector is None and deadline_before is not None and deadline_before <= now \
                    and models.rescorable(state, self.scorer):  # an intent deadline: a day after a vector
                rescored = models.rescore(state, self.scorer)
                self._stage_scores(step, user, state, now)
        if vector is not None:
            inputs += models.vector(state, vector, by_purchase=purchase_ts is not None)
            rescored = models.score(state, vector, self.scorer)
            self._stage_scores(step, vector.user_key, state, vector.ts)
        values.put("models", state)
        deadline = models.deadline(state)
        if deadline is not None and deadline != deadline_before:
            step.wakeups.append(deadline)
        for training_input in inputs:
            step.sends.append((TRAINING_ROUTE, TRAINER_KEY, training_input))
        return rescored, state.intent

    @staticmethod
    def _stage_scores(step: Step, user: str, state: UserModelState, ts: int) -> None:
        """The user's model-scores hash as of a scoring (``ts``: the vector's time, or a re-score's)."""
        step.redis.append(StageModelScores(user, state.scores_version, [
            "model_version", state.version, "cluster", state.membership.cluster
            if state.membership.cluster is not None else "", "intent",
            "" if state.intent is None else round(state.intent, 4), "ts", ts]))

    @staticmethod
    def _model_segment(engine: SegmentEngine, state: RuleState, user: str, now: int,
                       rescored: Rescored | None) -> list[SegmentChange]:
        if rescored is None:
            return []
        return engine.move_model_segment(state, user, rescored.entered, now,
                                         {"kind": rescored.cause, "model_version": rescored.score.version},
                                         rescored.score.version)

    def _recommend(self, values: UserValues, step: Step, event: Event, seq_base: int) -> None:
        """Update the user's recommendation state; ask the recommender for a list when it may change
        (``seq_base``: the user's counter base, read off the profile ``seq``)."""
        config, experiments = self.settings.recs, self.experiments is not None
        assert config is not None
        if event.type not in config.event_weights and event.type not in LIST_EVENTS:
            if experiments and event.type == VIEW_TYPE:  # counts as an exposure, changes no list
                user = values.get("recs") or UserRecState()
                values.put("recs", user)  # so an erasure or retention also clears the recommender's side
                self._rec_request(step, RecRequest(event.user_key, event.event_id, event.ts, None, user,
                                                   self.segments_now, seq_base=seq_base, event=event, rank=False,
                                                   arm=self._remember_arm(user, event.user_key)))
            return  # neither teaches the model nor changes the list: no state access
        user = values.get("recs") or UserRecState()
        interaction = user.remember(event, config, "", self.segments_now)
        arm = self._remember_arm(user, event.user_key)
        values.put("recs", user)
        self._rec_request(step, RecRequest(event.user_key, event.event_id, event.ts, interaction, user,
                                           self.segments_now, seq_base=seq_base,
                                           event=event if experiments else None, arm=arm))

    def _remember_arm(self, user: UserRecState, user_key: str) -> tuple[str, str] | None:
        """The user's arm in the experiment deciding lists, remembered in their recommendation state (which a
        login merges, so a visitor who signs up keeps the arm they were shown)."""
        if self.experiments is None:
            return None
        arm = self.experiments.arm_of(user.arms, user_key)
        if arm is not None:
            user.arms[arm[0]] = arm[1]
        return arm

    def _rec_request(self, step: Step, request: RecRequest) -> None:
        step.sends.append((RECS_ROUTE, rec_shard(request.user_key, self.settings.rec_shards), request))

    def _close_due_session(self, step: Step, features: UserFeatures, user: str, now: int) -> None:
        """Close the open session if its gap has passed by ``now``, exactly as its timer would."""
        expiry = features.sessions.expiry(self.settings.features.session_gap_ms)
        if expiry is not None and expiry <= now:
            features.sessions.timer_fired(expiry)
            vector = self.features.close_session(features, user, expiry)
            if vector is not None:
                step.redis.append(StageFeatures(vector))
                step.emit(user, vector.to_json(), self.settings.topics["features"])

    def _forget(self, values: UserValues, step: Step, user: str, features: UserFeatures, timestamp: int) -> None:
        """Idle past retention: exit every segment, then nothing of the user stays behind."""
        self._leave(values, step, user, timestamp, "retention", features, values.get("rules"))
        step.redis.append(StageForget(user))

    def _leave(self, values: UserValues, step: Step, user: str, ts: int, cause: str, features: UserFeatures | None,
               rules: RuleState | None, erase: bool = False) -> None:
        """The user leaves this operator (retention, erasure, a merge into another key): their R/F/M
        leaves the population, every segment is exited with ``cause``, the recommender forgets the
        list (and tombstones it on ``erase``), and the five user states are cleared."""
        if features is not None:
            self.features.forget(features)
        if self.engine is not None and rules is not None:
            self._emit_changes(values, step, self.engine.forget(rules, user, ts, cause))
        if self.settings.recs is not None and values.get("recs") is not None:
            self._rec_request(step, RecRequest(user, "", ts, None, None, (), erase=erase))
        if self.user_models is not None and values.get("models") is not None:
            step.sends.append((TRAINING_ROUTE, TRAINER_KEY, self.user_models.leave(user)))
        values.clear(USER_VALUES)

    def _segments(self, values: UserValues, step: Step, advance: Callable[[RuleState], list[SegmentChange]]) -> None:
        """Run ``advance`` on the user's rule state, store it, wake at its next expiry, emit the changes."""
        state: RuleState = values.get("rules") or RuleState(seq=self._counter_base(values))
        wake_before = state.wake
        changes = advance(state)
        self.segments_now = tuple(sorted(state.members))
        values.put("rules", state)
        if state.wake is not None and state.wake != wake_before:
            step.wakeups.append(state.wake)
        self._emit_changes(values, step, changes)

    def _emit_changes(self, values: UserValues, step: Step, changes: list[SegmentChange]) -> None:
        if not changes:
            return
        processing_time = now_ms()
        arm = None
        if self.experiments is not None:  # the arm the user's lists carry
            recs: UserRecState | None = values.get("recs")
            arm = self.experiments.arm_of(recs.arms if recs is not None else {}, changes[0].user_key)
        for change in changes:
            record = change.to_json(processing_time, arm)
            step.redis.append(StageSegmentChange(change, record))
            step.emit(change.user_key, record, self.settings.topics["segments"])

    def _after_features(self, values: UserValues, step: Step, features: UserFeatures,
                        vector: FeatureVector | None, registered: int | None) -> None:
        """Store the features, wake at a session's close and at retention, stage and emit the vector.

        The retention wake-up is asked for only when it moved from ``registered`` (the day it was last
        asked for; None for new features): it moves once per day of activity, and asking again per event
        cost the job a wake-up store and a timer registration per event for nothing.
        """
        config = self.settings.features
        expiry = features.sessions.needs_timer(config.session_gap_ms)
        if expiry is not None:
            step.wakeups.append(expiry)
        retention = retention_due(features, config)
        if retention != registered:
            step.wakeups.append(retention)
        values.put("features", features)
        if vector is not None:
            step.redis.append(StageFeatures(vector))
            step.emit(vector.user_key, vector.to_json(), self.settings.topics["features"])


def now_ms() -> int:
    """Wall-clock milliseconds: segment changes carry when they were made (``processing_time``)."""
    return int(time.time() * 1000)
