"""Deterministic, realistic user-event generator for tests, the demo and load runs.

Every user is planted with a persona (the ground truth that segment quality is judged against),
browses a Zipf-popular catalogue in sessions over simulated event time, and the merged stream is
then made imperfect on purpose -- late, duplicated and malformed records, as real collectors send
them -- so validation, deduplication and watermarks have work to do. Each random stream is a
``random.Random`` seeded from ``GeneratorSettings.seed`` and its own purpose, so a user's events
do not change when another part of the generator changes.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from operators.events import CONSENT_TYPES, PROFILE_TYPES, SCHEMA_VERSION, user_key_of
from personalize.settings import GeneratorSettings

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

HORIZON_MS = 30 * DAY_MS
"""Simulated span in which users start and spread their sessions."""
MIN_SESSION_GAP_MS = 30 * MINUTE_MS
"""Longer than the usual 30-minute inactivity timeout, so sessions never blur into each other."""
ZIPF_EXPONENT = 1.1
PRICE_SIGMA = 0.6
ANONYMOUS_SHARE = 0.2
CONSENT_GRANT_SHARE = 0.85
WITHDRAW_SHARE = 0.025
"""Of returning users: about 2% of all users with the default persona mix."""
RECONSENT_SHARE = 0.4
PROFILE_SHARE = 0.7
PLAN_CHANGE_SHARE = 0.01
PAID_CAMPAIGN_SHARE = 0.1
CATEGORY_PAGE_SHARE = 0.15
ONE_TIME_EVENTS = 6
"""Expected events of a one-time visitor's only session."""
RETURN_PURCHASE = 0.5
"""Purchase probability of a cart abandoner who comes back within 48 h."""

CATEGORY_MEDIAN_PRICE = {
    "electronics": 180.0, "books": 14.0, "fashion": 45.0, "home": 60.0,
    "sports": 50.0, "beauty": 22.0, "toys": 28.0, "grocery": 7.0,
}
"""Typical prices of the default categories; other categories get a seeded random median."""
COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "BR", "IN")
COUNTRY_WEIGHTS = (30, 12, 12, 10, 7, 7, 5, 7, 5, 5)
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_WEIGHTS = (55, 35, 10)
PLANS = ("free", "plus", "premium")
PAID_CAMPAIGNS = ("spring-sale", "retargeting", "brand-search", "social-promo")
GENERIC_WORDS = ("best", "new", "gift", "top rated", "premium", "sale")
BARGAIN_WORDS = ("cheap", "discount", "deal", "clearance", "under 20")
UNKNOWN_TYPES = ("wishlist_add", "PageView", "page-view", "video_play")
ABSURD_TIMESTAMPS = ("seconds", "microseconds", "year_1970", "year_2200")
YEAR_2200_MS = 7_258_118_400_000
MALFORMATIONS = ("invalid_json", "not_utf8", "missing_event_id", "unknown_type", "wrong_price",
                 "absurd_ts", "missing_user")

BuyerShare = Callable[[str], float]
"""A planted experiment effect: the probability that a user buys at all, by the key the user is first seen under."""
Row = tuple[int, int, dict[str, Any]]
"""(event time, user index, payload without its event id): merge-sortable, unique per user and time."""


@dataclass(frozen=True)
class Persona:
    """Behaviour of one planted persona. Probabilities are per opportunity (view, step, session)."""

    name: str
    activity: float
    """Relative event volume among multi-session users."""
    session_steps: float
    """Mean browsing steps (searches, page and product views) per session."""
    search: float
    cart: float
    """P(add_to_cart | product_view) for an item at its category's median price."""
    remove: float
    """P(remove_from_cart) per step while the cart is not empty."""
    checkout: float
    """P(checkout_start | non-empty cart at the end of a session)."""
    purchase: float
    """P(purchase | checkout_start)."""
    email_open: float
    """P(an email open precedes a session)."""
    email_click: float
    favourites: int
    favourite_share: float
    """Share of product views in the user's favourite categories."""
    price_sensitivity: float
    """Elasticity of interest to price: > 0 prefers cheap items, < 0 pricier ones."""
    max_quantity: int
    comeback: float
    """P(next session within 48 h after a session ending with an abandoned cart)."""
    plan_weights: tuple[float, float, float]
    single_session: bool = False

    @property
    def events_per_session(self) -> float:
        """Rough events per session, used only to spread a user's sessions over the horizon."""
        return 1.0 + self.session_steps * (1.0 + self.cart) + self.email_open * (1.0 + self.email_click)


PERSONAS: dict[str, Persona] = {p.name: p for p in (
    Persona("window_shopper", activity=1.0, session_steps=9, search=0.1, cart=0.03, remove=0.15,
            checkout=0.25, purchase=0.15, email_open=0.15, email_click=0.2, favourites=2,
            favourite_share=0.6, price_sensitivity=0.2, max_quantity=1, comeback=0.0,
            plan_weights=(0.8, 0.15, 0.05)),
    Persona("bargain_hunter", activity=1.0, session_steps=7, search=0.3, cart=0.12, remove=0.1,
            checkout=0.5, purchase=0.45, email_open=0.5, email_click=0.6, favourites=3,
            favourite_share=0.5, price_sensitivity=1.2, max_quantity=3, comeback=0.1,
            plan_weights=(0.7, 0.25, 0.05)),
    Persona("loyal_buyer", activity=1.8, session_steps=6, search=0.12, cart=0.3, remove=0.03,
            checkout=0.85, purchase=0.9, email_open=0.35, email_click=0.35, favourites=2,
            favourite_share=0.75, price_sensitivity=-0.3, max_quantity=4, comeback=0.2,
            plan_weights=(0.2, 0.4, 0.4)),
    Persona("cart_abandoner", activity=1.0, session_steps=6, search=0.15, cart=0.35, remove=0.08,
            checkout=0.7, purchase=0.12, email_open=0.25, email_click=0.3, favourites=2,
            favourite_share=0.6, price_sensitivity=0.3, max_quantity=2, comeback=0.45,
            plan_weights=(0.6, 0.3, 0.1)),
    Persona("one_time_visitor", activity=0.0, session_steps=3, search=0.2, cart=0.05, remove=0.1,
            checkout=0.3, purchase=0.3, email_open=0.0, email_click=0.0, favourites=1,
            favourite_share=0.5, price_sensitivity=0.4, max_quantity=1, comeback=0.0,
            plan_weights=(0.9, 0.1, 0.0), single_session=True),
)}
DEFAULT_PERSONA_WEIGHTS: dict[str, float] = {
    "window_shopper": 0.3, "bargain_hunter": 0.2, "loyal_buyer": 0.15, "cart_abandoner": 0.15,
    "one_time_visitor": 0.2,
}
HELD_OUT_PERSONAS: dict[str, Persona] = {p.name: p for p in (
    Persona("daily_glancer", activity=3.0, session_steps=2, search=0.02, cart=0.02, remove=0.2,
            checkout=0.3, purchase=0.3, email_open=0.02, email_click=0.1, favourites=1,
            favourite_share=0.8, price_sensitivity=0.0, max_quantity=1, comeback=0.0,
            plan_weights=(0.5, 0.3, 0.2)),
    Persona("big_ticket_planner", activity=0.35, session_steps=16, search=0.35, cart=0.1, remove=0.25,
            checkout=0.8, purchase=0.75, email_open=0.05, email_click=0.2, favourites=1,
            favourite_share=0.9, price_sensitivity=-1.0, max_quantity=1, comeback=0.3,
            plan_weights=(0.3, 0.3, 0.4)),
    Persona("email_responder", activity=0.8, session_steps=4, search=0.05, cart=0.2, remove=0.05,
            checkout=0.6, purchase=0.7, email_open=0.95, email_click=0.85, favourites=2,
            favourite_share=0.5, price_sensitivity=0.8, max_quantity=2, comeback=0.1,
            plan_weights=(0.6, 0.3, 0.1)),
    Persona("hesitant_carter", activity=1.4, session_steps=10, search=0.1, cart=0.4, remove=0.45,
            checkout=0.25, purchase=0.25, email_open=0.2, email_click=0.2, favourites=3,
            favourite_share=0.4, price_sensitivity=0.5, max_quantity=3, comeback=0.05,
            plan_weights=(0.7, 0.2, 0.1)),
    Persona("rare_bulk_buyer", activity=0.15, session_steps=5, search=0.15, cart=0.5, remove=0.02,
            checkout=0.95, purchase=0.95, email_open=0.3, email_click=0.1, favourites=2,
            favourite_share=0.7, price_sensitivity=0.6, max_quantity=8, comeback=0.0,
            plan_weights=(0.4, 0.4, 0.2)),
)}
"""Personas of kinds the default mix lacks (cadences from daily glances to a few visits a month,
deep research sessions, email-led visits, heavy cart churn): a held-out check that the segment
models were never tuned on (docs/models.md)."""
ALL_PERSONAS: dict[str, Persona] = {**PERSONAS, **HELD_OUT_PERSONAS}
PERSONA_MIXES: dict[str, dict[str, float]] = {
    "default": DEFAULT_PERSONA_WEIGHTS,
    "heldout": {"daily_glancer": 0.3, "big_ticket_planner": 0.15, "email_responder": 0.2,
                "hesitant_carter": 0.2, "rare_bulk_buyer": 0.15},
}
"""Named persona mixes (``personalize evaluate segments --personas``)."""


def topic_role(event_type: str) -> str:
    """The ``settings.kafka.topics`` key an event type is published to."""
    if event_type in PROFILE_TYPES:
        return "profile"
    return "consent" if event_type in CONSENT_TYPES else "behavior"


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    category: str
    price: float


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One Kafka record to publish; ``ts`` is the event time and the Kafka record timestamp."""

    topic_role: str
    """``"behavior"``, ``"profile"``, ``"consent"`` (``"tracking"`` in the Segment spec): a key of
    ``settings.kafka.topics``."""
    key: bytes | None
    """The partitioning key: ``user_id``, else ``anonymous_id``, as UTF-8 (``None`` for some malformed)."""
    value: bytes
    ts: int
    kind: str
    """``"valid"``, ``"duplicate"`` (an exact re-send of an earlier valid record) or ``"malformed"``."""


@dataclass(frozen=True)
class _User:
    index: int
    user_id: str
    persona: Persona
    budget: int
    """Exactly this many valid events; the user's endless behaviour stream is cut there."""


def _pick(cumulative: Sequence[float], rng: random.Random) -> int:
    """An index drawn in proportion to the increments of ``cumulative``."""
    return min(bisect_right(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` into integers summing exactly to ``total``."""
    scale = total / sum(weights)
    raw = [w * scale for w in weights]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


class _Catalogue:
    """Items with log-normal prices per category and Zipf popularity, sampled per persona."""

    def __init__(self, settings: GeneratorSettings, personas: Sequence[Persona]) -> None:
        rng = random.Random(f"{settings.seed}/catalogue")
        medians = self.medians = {
            c: CATEGORY_MEDIAN_PRICE.get(c) or math.exp(rng.uniform(math.log(5), math.log(200)))
            for c in settings.categories}
        ranks = list(range(1, settings.items + 1))
        rng.shuffle(ranks)
        self.items: list[Item] = []
        by_category: dict[str, list[tuple[Item, float]]] = {c: [] for c in settings.categories}
        for number, rank in enumerate(ranks, start=1):
            category = rng.choice(settings.categories)
            price = round(max(0.5, medians[category] * rng.lognormvariate(0.0, PRICE_SIGMA)), 2)
            item = Item(f"item-{number:05d}", category, price)
            self.items.append(item)
            by_category[category].append((item, rank ** -ZIPF_EXPONENT))
        self.categories = [c for c in settings.categories if by_category[c]]
        self._items = {c: [item for item, _ in by_category[c]] for c in self.categories}
        self._category_cumulative = list(itertools.accumulate(
            sum(weight for _, weight in by_category[c]) for c in self.categories))
        self._cumulative = {
            (persona.name, c): list(itertools.accumulate(
                weight * (item.price / medians[c]) ** -persona.price_sensitivity
                for item, weight in by_category[c]))
            for persona in personas for c in self.categories
        }

    def category(self, rng: random.Random) -> str:
        """A category in proportion to the popularity of its items."""
        return self.categories[_pick(self._category_cumulative, rng)]

    def item(self, rng: random.Random, persona: Persona, category: str) -> Item:
        """An item of ``category``, Zipf-popular and weighted by the persona's price sensitivity."""
        return self._items[category][_pick(self._cumulative[(persona.name, category)], rng)]


class _Visitor:
    """One user's behaviour: an endless sequence of sessions over simulated time, cut by the caller.

    Event times strictly increase, so (ts, user index) orders a user's rows uniquely for the merge.
    """

    def __init__(self, user: _User, catalogue: _Catalogue, settings: GeneratorSettings,
                 buyers: BuyerShare | None = None) -> None:
        rng = self.rng = random.Random(f"{settings.seed}/user/{user.index}")
        persona = self.persona = user.persona
        self.user = user
        self.catalogue = catalogue
        self.start_ms = settings.start_ms
        self.favourites = rng.sample(catalogue.categories, min(persona.favourites, len(catalogue.categories)))
        self.country = rng.choices(COUNTRIES, COUNTRY_WEIGHTS)[0]
        self.device = rng.choices(DEVICES, DEVICE_WEIGHTS)[0]
        self.plan = rng.choices(PLANS, persona.plan_weights)[0]
        self.anonymous_id = f"anon-{rng.getrandbits(48):012x}" if rng.random() < ANONYMOUS_SHARE else None
        # Drawn from a stream of its own, so a buyer's events are the same whatever the other users' shares.
        self.buyer = buyers is None or random.Random(f"{settings.seed}/buyer/{user.index}").random() < buyers(
            user_key_of("" if self.anonymous_id else user.user_id, self.anonymous_id or ""))
        first_window = 0.95 if persona.single_session else 0.3
        self.t = settings.start_ms + int(rng.random() * first_window * HORIZON_MS)
        self.end_ms = settings.start_ms + HORIZON_MS
        self.emitted = 0
        sessions = max(1.0, user.budget / persona.events_per_session)
        self.withdraw_at = self.reconsent_at = -1
        if sessions >= 2 and rng.random() < WITHDRAW_SHARE:
            self.withdraw_at = rng.randint(1, int(sessions) - 1)
            if rng.random() < RECONSENT_SHARE:
                self.reconsent_at = self.withdraw_at + rng.randint(1, 3)
        self.identity: dict[str, str] = (
            {"anonymous_id": self.anonymous_id} if self.anonymous_id else {"user_id": user.user_id})
        self.session_id = ""
        self.context: dict[str, Any] = {}

    def rows(self) -> Iterator[Row]:
        rng = self.rng
        returning = False
        for number in itertools.count():
            if number == 0 and rng.random() < CONSENT_GRANT_SHARE:
                yield self._consent(personalization=True, analytics=True, marketing=rng.random() < 0.6)
            if number == 0 and not self.anonymous_id and rng.random() < PROFILE_SHARE:
                yield self._profile()
            if number == self.withdraw_at:
                yield self._consent(personalization=False)
            if number == self.reconsent_at:
                yield self._consent(personalization=True)
            if number > 0 and rng.random() < PLAN_CHANGE_SHARE:
                self.plan = rng.choice(PLANS)
                yield self._event("profile_update", traits={"plan": self.plan})
            abandoned = yield from self._session(returning)
            if number == 0 and self.anonymous_id:
                yield from self._identify()
            returning = abandoned and rng.random() < self.persona.comeback
            if returning:
                self._advance(rng.uniform(HOUR_MS, 48 * HOUR_MS))
            else:
                self._advance(self._session_gap_ms())

    def _session_gap_ms(self) -> float:
        """Time to the first of the budget's remaining sessions scattered uniformly over the horizon left."""
        sessions = max(1.0, (self.user.budget - self.emitted) / self.persona.events_per_session)
        gap = (self.end_ms - self.t) * (1.0 - self.rng.random() ** (1.0 / sessions))
        return max(MIN_SESSION_GAP_MS, gap)

    def _advance(self, ms: float) -> None:
        self.t += max(1, int(ms))

    def _event(self, event_type: str, **fields: Any) -> Row:
        doc = {"schema_version": SCHEMA_VERSION, "event_id": "", "type": event_type, "ts": self.t,
               **self.identity, **fields}
        row = (self.t, self.user.index, doc)
        self.t += 1
        self.emitted += 1
        return row

    def _hit(self, event_type: str, **fields: Any) -> Row:
        """An on-site event: carries the session and its context."""
        return self._event(event_type, session_id=self.session_id, context=self.context, **fields)

    def _consent(self, **purposes: bool) -> Row:
        return self._event("consent_change", consent=purposes)

    def _profile(self) -> Row:
        return self._event("profile_update", traits={
            "email": f"{self.user.user_id}@example.com", "country": self.country, "plan": self.plan})

    def _identify(self) -> Iterator[Row]:
        """The anonymous visitor signs up: later events carry the user id."""
        self._advance(self.rng.uniform(5 * SECOND_MS, 2 * MINUTE_MS))
        yield self._event("identify", user_id=self.user.user_id)
        self.identity = {"user_id": self.user.user_id}
        if self.rng.random() < PROFILE_SHARE:
            yield self._profile()

    def _campaign(self) -> Iterator[Row]:
        """Email touches before a session; sets the session's campaign (email or paid)."""
        rng = self.rng
        campaign = ""
        if rng.random() < self.persona.email_open:
            newsletter = f"newsletter-{(self.t - self.start_ms) // (7 * DAY_MS) + 1}"
            yield self._event("email_open", context={"campaign": newsletter})
            if rng.random() < self.persona.email_click:
                self._advance(rng.lognormvariate(math.log(2 * MINUTE_MS), 1.0))
                yield self._event("email_click", context={"campaign": newsletter})
                campaign = newsletter
            else:
                self._advance(rng.uniform(MINUTE_MS, 20 * MINUTE_MS))
        elif rng.random() < PAID_CAMPAIGN_SHARE:
            campaign = rng.choice(PAID_CAMPAIGNS)
        device = self.device if rng.random() < 0.85 else rng.choice(DEVICES)
        self.context = {"device": device, "geo": {"country": self.country}}
        if campaign:
            self.context["campaign"] = campaign

    def _session(self, returning: bool) -> Generator[Row, None, bool]:
        """One visit through the funnel; returns whether it ended with an abandoned cart."""
        rng, persona, catalogue = self.rng, self.persona, self.catalogue
        self.session_id = f"s-{rng.getrandbits(48):012x}"
        yield from self._campaign()
        landing = "/deals" if persona.price_sensitivity > 1 and rng.random() < 0.5 else "/"
        yield self._hit("page_view", properties={"path": landing})
        cart: dict[str, tuple[Item, int]] = {}
        focus = ""
        steps = (math.inf if persona.single_session
                 else max(1, round(rng.expovariate(1.0 / persona.session_steps))))
        step = 0
        while step < steps:
            step += 1
            self._advance(rng.lognormvariate(math.log(15 * SECOND_MS), 0.9))
            draw = rng.random()
            if draw < persona.search:
                focus = self._interest()
                words = BARGAIN_WORDS if persona.price_sensitivity > 1 else GENERIC_WORDS
                yield self._hit("search", query=f"{rng.choice(words)} {focus}",
                                properties={"results": rng.randint(0, 120)})
            elif draw < persona.search + CATEGORY_PAGE_SHARE:
                focus = self._interest()
                yield self._hit("page_view", properties={"path": f"/c/{focus}"})
            else:
                item = catalogue.item(rng, persona, focus or self._interest())
                yield self._hit("product_view", item_id=item.item_id, category=item.category,
                                price=item.price)
                cheapness = catalogue.medians[item.category] / item.price
                appeal = min(3.0, cheapness ** persona.price_sensitivity)
                if rng.random() < persona.cart * appeal and self.buyer:
                    self._advance(rng.lognormvariate(math.log(8 * SECOND_MS), 0.6))
                    quantity = 1 if rng.random() < 0.75 else rng.randint(1, persona.max_quantity)
                    cart[item.item_id] = (item, quantity)
                    yield self._hit("add_to_cart", item_id=item.item_id, category=item.category,
                                    price=item.price, quantity=quantity)
            if cart and rng.random() < persona.remove:
                self._advance(rng.lognormvariate(math.log(10 * SECOND_MS), 0.6))
                item, quantity = cart.pop(rng.choice(list(cart)))
                yield self._hit("remove_from_cart", item_id=item.item_id, category=item.category,
                                quantity=quantity)
        if not cart:
            return False
        if rng.random() >= persona.checkout:
            return True
        self._advance(rng.lognormvariate(math.log(20 * SECOND_MS), 0.6))
        value = round(sum(item.price * quantity for item, quantity in cart.values()), 2)
        yield self._hit("checkout_start", properties={"items": len(cart), "value": value})
        if rng.random() >= (max(persona.purchase, RETURN_PURCHASE) if returning else persona.purchase):
            return True
        self._advance(rng.lognormvariate(math.log(40 * SECOND_MS), 0.5))
        order_id = f"o-{rng.getrandbits(48):012x}"
        for item, quantity in cart.values():
            yield self._hit("purchase", item_id=item.item_id, category=item.category, price=item.price,
                            quantity=quantity, order_id=order_id)
        return False

    def _interest(self) -> str:
        if self.favourites and self.rng.random() < self.persona.favourite_share:
            return self.rng.choice(self.favourites)
        return self.catalogue.category(self.rng)


class EventGenerator:
    """Deterministic stream of exactly ``settings.events`` Kafka records for a seed.

    Valid events of all users are merged in event-time order; then ``out_of_order_share`` of them
    are held back past at least one later event (by at most ``max_disorder_ms`` of event time, so
    none is late for a watermark with that bound), ``duplicate_share`` records are exact re-sends
    within the same bound, and ``malformed_share`` records are broken in one of several ways.
    A record can only be moved out of order if a later event follows within ``max_disorder_ms``,
    so very sparse streams reach a lower out-of-order share than configured.
    """

    def __init__(self, settings: GeneratorSettings, persona_weights: Mapping[str, float] | None = None,
                 buyers: BuyerShare | None = None) -> None:
        """``buyers`` plants an experiment's effect with a known answer (docs/experiments.md): it is called with
        each user's first key (``user_key_of``: ``anon:<id>`` for a visitor who signs up later, else the user
        id) and gives the probability that the user ever adds to a cart; the others browse the same way but
        never buy. Arms with shares 1 and 1/f then differ in converted users and revenue by exactly the
        factor f in expectation, whatever the personas do. ``None`` (the default) changes no byte."""
        self.settings = settings
        self.buyers = buyers
        self.persona_weights = dict(DEFAULT_PERSONA_WEIGHTS if persona_weights is None else persona_weights)
        unknown = set(self.persona_weights) - set(ALL_PERSONAS)
        if unknown:
            raise ValueError(f"unknown personas {sorted(unknown)}; known: {sorted(ALL_PERSONAS)}")
        # The default personas always take part (weight 0 if unnamed), so a default mix plants as it always did.
        self._personas = [p for p in ALL_PERSONAS.values() if p.name in PERSONAS or p.name in self.persona_weights]
        weights = [self.persona_weights.get(p.name, 0.0) for p in self._personas]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("persona weights must be non-negative with a positive sum")
        self.malformed_count = round(settings.events * settings.malformed_share)
        self.duplicate_count = round(settings.events * settings.duplicate_share)
        self.valid_count = settings.events - self.malformed_count - self.duplicate_count
        if self.valid_count < 1:
            raise ValueError("malformed_share + duplicate_share leave no valid events")
        self._catalogue = _Catalogue(settings, self._personas)
        self._users = self._plant_users(weights)

    def _plant_users(self, weights: list[float]) -> list[_User]:
        rng = random.Random(f"{self.settings.seed}/users")
        counts = _apportion(self.settings.users, weights)
        personas = [p for p, count in zip(self._personas, counts, strict=True) for _ in range(count)]
        rng.shuffle(personas)
        noise = [rng.uniform(0.5, 1.5) if p.single_session else p.activity * rng.lognormvariate(0.0, 0.5)
                 for p in personas]
        single = sum(p.single_session for p in personas)
        single_share = (1.0 if single == len(personas)
                        else min(0.5, ONE_TIME_EVENTS * single / self.valid_count))
        single_noise = sum(n for n, p in zip(noise, personas, strict=True) if p.single_session) or 1.0
        other_noise = sum(n for n, p in zip(noise, personas, strict=True) if not p.single_session) or 1.0
        shares = [n * (single_share / single_noise if p.single_session else (1 - single_share) / other_noise)
                  for n, p in zip(noise, personas, strict=True)]
        budgets = _apportion(self.valid_count, shares)
        return [_User(i, f"user-{i + 1:05d}", p, budget)
                for i, (p, budget) in enumerate(zip(personas, budgets, strict=True))]

    def personas(self) -> dict[str, str]:
        """user_id -> planted persona name, for every user (also those whose budget is zero)."""
        return {user.user_id: user.persona.name for user in self._users}

    def catalogue(self) -> list[Item]:
        return list(self._catalogue.items)

    def _valid_rows(self) -> Iterator[Row]:
        """All users' events merged by event time: exactly ``valid_count`` rows."""
        return heapq.merge(*(
            itertools.islice(_Visitor(user, self._catalogue, self.settings, self.buyers).rows(), user.budget)
            for user in self._users if user.budget))

    def records(self) -> Iterator[GeneratedRecord]:
        settings = self.settings
        rng = random.Random(f"{settings.seed}/noise")
        max_disorder = settings.max_disorder_ms
        malformed_before = Counter(rng.randrange(self.valid_count) for _ in range(self.malformed_count))
        duplicated = Counter(rng.randrange(self.valid_count) for _ in range(self.duplicate_count))
        held: list[tuple[int, int, GeneratedRecord]] = []
        order = itertools.count()
        eligible = index = 0
        rows = self._valid_rows()
        current = next(rows, None)
        while current is not None:
            following = next(rows, None)
            ts, _, doc = current
            while held and held[0][0] < ts:
                yield heapq.heappop(held)[2]
            for _ in range(malformed_before[index]):
                yield _malformed(doc, ts, rng, f"x-{settings.seed}-{next(order)}")
            doc["event_id"] = f"e-{settings.seed}-{index}"
            key = doc.get("user_id") or doc["anonymous_id"]
            record = GeneratedRecord(topic_role(doc["type"]), key.encode(), _dumps(doc).encode(), ts, "valid")
            release = ts
            if following is not None and ts < following[0] <= ts + max_disorder:
                eligible += 1
                if rng.random() * eligible < settings.out_of_order_share * (index + 1):
                    release = rng.randint(following[0], ts + max_disorder)
            if release > ts:
                heapq.heappush(held, (release, next(order), record))
            else:
                yield record
            for _ in range(duplicated[index]):
                resend = max(release, ts + rng.randint(0, max_disorder))
                heapq.heappush(held, (resend, next(order), replace(record, kind="duplicate")))
            current = following
            index += 1
        while held:
            yield heapq.heappop(held)[2]


def _dumps(doc: Mapping[str, Any], ensure_ascii: bool = True) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=ensure_ascii)


def _malformed(template: dict[str, Any], ts: int, rng: random.Random, event_id: str) -> GeneratedRecord:
    """A broken record modelled on a real event, with a plausible Kafka timestamp ``ts``."""
    doc = {**template, "event_id": event_id}
    key: str | None = doc.get("user_id") or doc.get("anonymous_id")
    kind = rng.choice(MALFORMATIONS)
    if kind == "invalid_json":
        text = _dumps(doc)
        value = text[:rng.randrange(1, len(text) - 1)].encode()
    elif kind == "not_utf8":
        doc["properties"] = {"note": rng.choice(("café", "Münster", "señal", "naïve"))}
        value = _dumps(doc, ensure_ascii=False).encode("latin-1")
        key = key if rng.random() < 0.5 else None
    else:
        if kind == "missing_event_id":
            del doc["event_id"]
        elif kind == "unknown_type":
            doc["type"] = rng.choice(UNKNOWN_TYPES)
        elif kind == "wrong_price":
            doc["price"] = f"{doc.get('price', rng.uniform(1, 100)):.2f} EUR"
        elif kind == "absurd_ts":
            doc["ts"] = {"seconds": ts // 1000, "microseconds": ts * 1000, "year_1970": rng.randint(0, 10**9),
                         "year_2200": YEAR_2200_MS + rng.randint(0, 10**10)}[rng.choice(ABSURD_TIMESTAMPS)]
        else:
            doc.pop("user_id", None)
            doc.pop("anonymous_id", None)
            key = None
        value = _dumps(doc).encode()
    role = topic_role(template["type"])
    return GeneratedRecord(role, key.encode() if key else None, value, ts, "malformed")
