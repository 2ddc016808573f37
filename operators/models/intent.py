"""Purchase intent: an online classifier, and the delayed labels it learns from.

An example is a feature vector's :func:`~operators.models.inputs.intent_input` at the vector's
event time; its label is whether the user purchases within the horizon after it. The label is
only known later, so each user's examples wait in keyed state (:class:`PendingExamples`) until a
purchase settles them as positive or an event-time timer at the deadline settles them as negative.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from river import base, linear_model, optim, preprocessing
from river.base.typing import ClfTarget

from operators.models.inputs import IntentValues

Labelled = tuple[IntentValues, bool]


class IntentClassifier(base.Classifier):
    """P(purchase within the horizon): ``StandardScaler`` then logistic regression trained by SGD.

    It may learn from a sample of the negative examples (``negative_share`` of them, every positive:
    most examples are negative, and each costs a prediction and an SGD step). What it learns then has
    the odds of purchase ``1 / negative_share`` times too high, so its probabilities and its published
    intercept add ``log(negative_share)`` to the logit (the usual correction for negative
    down-sampling); ranking, and so ROC AUC, is unchanged by it.

    >>> model = IntentClassifier()
    >>> for _ in range(200):
    ...     model.learn_one({"carts": 3.0}, True)
    ...     model.learn_one({"carts": 0.0}, False)
    >>> model.predict_proba_one({"carts": 3.0})[True] > 0.9
    True
    """

    negative_share: float = 1.0
    """Class default: a classifier pickled before negative sampling learned every example."""

    def __init__(self, learning_rate: float = 0.05, l2: float = 0.0, negative_share: float = 1.0) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.negative_share = negative_share
        self._model = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), l2=l2, intercept_lr=learning_rate)

    def learn_one(self, x: dict[Hashable, Any], y: ClfTarget) -> None:
        self._model.learn_one(x, bool(y))

    def predict_proba_one(self, x: dict[Hashable, Any], **kwargs: Any) -> dict[ClfTarget, float]:
        proba = self._model.predict_proba_one(x)
        if self.negative_share == 1.0:
            return proba
        odds = proba[True] * self.negative_share
        p_true = odds / (odds + proba[False]) if odds + proba[False] > 0.0 else 0.0
        return {False: 1.0 - p_true, True: p_true}

    def linear_state(self) -> tuple[tuple[Mapping[Hashable, float], Mapping[Hashable, float]],
                                    Mapping[Hashable, float], float]:
        """((scaler means, variances), weights, intercept) by feature name: what a published model carries
        (the intercept corrected for the negative sample)."""
        scaler, regression = self._model.steps.values()
        return (scaler.means, scaler.vars), regression._weights, \
            float(regression.intercept) + math.log(self.negative_share)


@dataclass
class PendingExamples:
    """One user's examples awaiting a label, oldest first: ``(event time, intent values)``."""

    examples: list[tuple[int, IntentValues]] = field(default_factory=list)
    dropped: int = 0
    """Examples evicted unlabelled because ``max_pending`` newer ones were waiting."""


@dataclass(frozen=True)
class IntentLabeler:
    """Settles pending examples: positive on a purchase within the horizon, negative once it has passed.

    A purchase at ``p`` labels the examples taken at ``t < p <= t + horizon``; examples taken after
    an out-of-order purchase keep waiting. At event time ``now`` (a timer, so the watermark says no
    event ``<= now`` is still to come) every example with ``t + horizon <= now`` is negative.
    """

    horizon_ms: int
    max_pending: int

    def add(self, pending: PendingExamples, ts: int, example: IntentValues) -> None:
        pending.examples.append((ts, example))
        pending.examples.sort(key=lambda item: item[0])
        if len(pending.examples) > self.max_pending:
            del pending.examples[0]
            pending.dropped += 1

    def purchase(self, pending: PendingExamples, ts: int) -> list[Labelled]:
        return self._settle(pending, lambda t: t < ts <= t + self.horizon_ms, True)

    def expire(self, pending: PendingExamples, now_ts: int) -> list[Labelled]:
        return self._settle(pending, lambda t: t + self.horizon_ms <= now_ts, False)

    def next_deadline(self, pending: PendingExamples) -> int | None:
        """Event time of the next negative label: register a timer here."""
        return pending.examples[0][0] + self.horizon_ms if pending.examples else None

    @staticmethod
    def _settle(pending: PendingExamples, due: Callable[[int], bool], label: bool) -> list[Labelled]:
        settled = [example for t, example in pending.examples if due(t)]
        if settled:
            pending.examples = [(t, example) for t, example in pending.examples if not due(t)]
        return [(example, label) for example in settled]
