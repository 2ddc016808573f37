"""Feature vector (``FeatureVector.values``, docs/features.md) -> numeric model inputs.

Models see a few dense, roughly symmetric numbers rather than the raw ~60 fields: counts are
log-transformed (a heavy user is not 10x as different as a light one), and behaviour is described
by *rates* with a small prior, so a user's cluster reflects how they shop, not how much history
they have yet. Reads the feature windows ``1h``, ``24h`` and ``30d`` (the defaults): a missing
field fails loudly rather than feeding zeros.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Hashable, Mapping
from typing import Any

ModelInput = dict[Hashable, float]
"""Feature name -> value. Names are strings; typed as River's estimators type their inputs."""

PRIOR = 2.0
"""Pseudo-count added to rate denominators: 1 cart after 1 view is weak evidence of a carting habit."""
HABITS = ("sessions", "cart_rate", "checkout_rate", "purchase_rate", "search_share",
          "email_click_rate", "email_open_rate", "order_value", "session_depth")
"""Long-run habits over the 30-day windows and the 180-day order value: what both models see."""
BEHAVIOUR_FEATURES = (*HABITS, "remove_rate")
"""What the clusterer sees: the habits and how often carted items are taken out again (cart churn,
which tells a hesitant carter from a buyer who carts as much; docs/models.md measures it)."""
ON_SITE_COUNTS = ("page_view_30d", "product_view_30d", "search_30d")
RECENT_COUNTS = ("product_view_1h", "add_to_cart_1h", "remove_from_cart_1h", "checkout_start_1h", "purchase_1h",
                 "product_view_24h", "add_to_cart_24h", "checkout_start_24h", "purchase_24h", "purchase_30d")
OPEN_SESSION = ("open_session_depth", "open_session_minutes", "cart_abandoned", "returned_after_abandon",
                "purchase_recency", "engagement")
INTENT_FEATURES = (*HABITS, *RECENT_COUNTS, *OPEN_SESSION)
"""What the intent model sees, in order: pending examples can be stored as bare values in this order."""
PURCHASE_RECENCY_HALF_LIFE_DAYS = 7.0
IntentValues = tuple[float, ...]
"""An intent input's values in ``INTENT_FEATURES`` order: how examples wait for their label (in keyed state and
between events), without a dict per example."""
#: The largest float16: a rate of a pathological user (100,000 email opens in no session) is capped
#: there rather than failing the encoding, far past where the model's inputs mean anything different.
HALF_MAX = 65504.0
_HALF = struct.Struct(f"<{len(INTENT_FEATURES)}e")


def half_precision(values: IntentValues) -> IntentValues:
    """``values`` in half precision (3 significant digits), capped at :data:`HALF_MAX`: how a waiting
    example is kept, in memory as in keyed state, so a value read back is the one kept."""
    return _halved(_HALF, values)


def _halved(layout: struct.Struct, values: tuple[float, ...]) -> tuple[float, ...]:
    try:  # capping every value costs more than trying first: values past HALF_MAX are rare
        return layout.unpack(layout.pack(*values))
    except OverflowError:
        return layout.unpack(layout.pack(*(min(value, HALF_MAX) for value in values)))
_INTENT_VALUES = operator.itemgetter(*INTENT_FEATURES)
BehaviourValues = tuple[float, ...]
"""A behaviour input's values in ``BEHAVIOUR_FEATURES`` order, in half precision: how a user's latest scored
input is kept for a re-score (in keyed state and between events)."""
_BEHAVIOUR_HALF = struct.Struct(f"<{len(BEHAVIOUR_FEATURES)}e")
_BEHAVIOUR_VALUES = operator.itemgetter(*BEHAVIOUR_FEATURES)


def behaviour_values(x: ModelInput) -> BehaviourValues:
    """A behaviour input as kept for a re-score (:data:`BehaviourValues`), capped at :data:`HALF_MAX`."""
    return _halved(_BEHAVIOUR_HALF, _BEHAVIOUR_VALUES(x))


def has_behaviour(values: Mapping[str, Any]) -> bool:
    """Whether the user browsed at all in the last 30 days.

    Vectors triggered by consent, profile or identify events alone carry no behaviour; they are
    neither learned from nor assigned a cluster.
    """
    return any(values[name] for name in ON_SITE_COUNTS)


def behaviour_input(values: Mapping[str, Any]) -> ModelInput:
    """The clustering input: habits that separate shoppers, independent of activity volume where possible."""
    views = values["product_view_30d"]
    carts = values["add_to_cart_30d"]
    checkouts = values["checkout_start_30d"]
    sessions = values["sessions_30d"]
    browsing = views + values["page_view_30d"] + values["search_30d"]
    return {
        "sessions": math.log1p(sessions),
        "cart_rate": carts / (views + PRIOR),
        "checkout_rate": checkouts / (carts + PRIOR),
        "purchase_rate": values["purchase_30d"] / (checkouts + PRIOR),
        "search_share": values["search_30d"] / (browsing + PRIOR),
        "email_click_rate": values["email_click_30d"] / (sessions + 1),
        "email_open_rate": values["email_open_30d"] / (sessions + 1),
        "order_value": math.log1p(values["aov_180d"]),
        "session_depth": math.log1p(values["avg_session_depth_30d"]),
        "remove_rate": values["remove_from_cart_30d"] / (carts + PRIOR),
    }


def intent_input(values: Mapping[str, Any], behaviour: ModelInput | None = None) -> ModelInput:
    """The purchase-intent input: the habits above (``behaviour``, when already computed) plus what the user is
    doing right now."""
    recency = values["recency_days"]
    habits = behaviour_input(values) if behaviour is None else behaviour
    x: ModelInput = {name: habits[name] for name in HABITS}
    x.update({name: math.log1p(values[name]) for name in RECENT_COUNTS})
    x.update({
        "open_session_depth": math.log1p(values["session_depth"]),
        "open_session_minutes": math.log1p(values["session_minutes"]),
        "cart_abandoned": float(values["cart_abandoned"]),
        "returned_after_abandon": float(values["returned_after_abandon"]),
        "purchase_recency": 0.0 if recency is None else 0.5 ** (recency / PURCHASE_RECENCY_HALF_LIFE_DAYS),
        "engagement": values["engagement"] / 100,
    })
    return x


def model_inputs(values: Mapping[str, Any]) -> tuple[ModelInput | None, ModelInput]:
    """Both inputs of one vector, the habits computed once: the behaviour input (None without behaviour) and
    the intent input. The user's step learns and scores from the same vector."""
    behaviour = behaviour_input(values)
    return (behaviour if has_behaviour(values) else None), intent_input(values, behaviour)


def intent_values(x: ModelInput) -> IntentValues:
    """An intent input as it waits for its label (:data:`IntentValues`)."""
    return _INTENT_VALUES(x)  # type: ignore[no-any-return]


def intent_example(values: IntentValues) -> ModelInput:
    """The intent input of waiting values, to learn from."""
    return dict(zip(INTENT_FEATURES, values, strict=True))
