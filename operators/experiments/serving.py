"""What experiments ask of the recommender: the arm whose list a user gets, and what a list or event counts.

The recommender owns the lists, so it decides them per arm and counts what they do (docs/experiments.md):

- **One experiment decides a list**: the first active one in definition order. Its arm's treatment picks
  the list (``popularity``: the trending source alone; ``personalized``: the arm's source weights or the
  job's; ``none``: the job's list as a *shadow*, computed and counted but never emitted). Other active
  experiments count nothing until it stops or pauses; run experiments one after another.
- **Exposure**: a list the recommender emits (or shadows) for the user, or a ``recommendation_view`` event.
- **Attribution**: a click, cart or purchase of an exposed item within the conversion window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from operators.events import Event
from operators.experiments.assignment import Assignment, assign
from operators.experiments.attribution import Bounds, Counts, Delta, ExperimentState
from operators.experiments.config import Arm, Experiment

#: Route (``topic`` value) of the recommender's internal records to the experiment metrics operator: the
#: key is the experiment id, the value the pickled (arm, counts) pairs to add.
EXPERIMENTS_ROUTE = "__experiments__"
#: The weights of the ``popularity`` treatment: the trending source alone.
POPULARITY_WEIGHTS: Mapping[str, float] = {"trending": 1.0}


@dataclass(frozen=True)
class ArmChoice:
    """The experiment that decides a user's list, and the user's arm in it."""

    experiment: Experiment
    arm: Arm

    @property
    def shadow(self) -> bool:
        """The arm is shown nothing: its list is computed and counted, never emitted."""
        return self.arm.treatment == "none"

    def weights(self, default: Mapping[str, float]) -> Mapping[str, float]:
        """The recommendation source weights of the arm's list."""
        if self.arm.treatment == "popularity":
            return POPULARITY_WEIGHTS
        return self.arm.source_weights or default


class ExperimentPolicy:
    """The active experiments, the assignment key and the per-user bounds, applied to a user's state."""

    def __init__(self, experiments: tuple[Experiment, ...], secret: bytes, bounds: Bounds,
                 kept: frozenset[str] | None = None) -> None:
        self.experiments = experiments
        self.by_id = {experiment.id: experiment for experiment in experiments}
        self.secret = secret
        self.bounds = bounds
        self.kept = frozenset(self.by_id) if kept is None else kept
        """Experiments not stopped (active or paused): a user's state keeps only theirs."""

    def tidy(self, state: ExperimentState, remembered: tuple[str, str] | None = None) -> ExperimentState:
        """``state`` without what it holds of stopped experiments (their arms are never needed again), and
        with the arm the user operator remembers for the user (``remembered``: experiment, arm), which wins
        over the hash: a visitor who logged in keeps their arm (:meth:`arm_of`)."""
        if state.assignments.keys() - self.kept:
            state.forget(self.kept)
        experiment = self.by_id.get(remembered[0]) if remembered is not None else None
        if remembered is not None and experiment is not None and experiment.arm(remembered[1]) is not None:
            current = state.assignments.get(experiment.id)
            if current is None or current.arm != remembered[1]:  # another arm's counters start afresh
                state.assignments[experiment.id] = Assignment(remembered[1])
        return state

    def choose(self, state: ExperimentState, user_key: str) -> ArmChoice | None:
        """The experiment deciding the user's list and their arm in it (kept in ``state``); None: none runs."""
        if not self.experiments:
            return None
        experiment = self.experiments[0]
        arm = experiment.arm(state.arm(experiment, user_key, self.secret))
        assert arm is not None  # an assignment is always one of the experiment's arms
        return ArmChoice(experiment, arm)

    def arm_of(self, arms: Mapping[str, str], user_key: str) -> tuple[str, str] | None:
        """(experiment, arm) of the user in the experiment deciding lists: the arm the user operator
        remembers for them (``UserRecState.arms``, merged at a login: the known user's wins, else the
        visitor's), else the keyed hash of the user key. None: no experiment runs."""
        if not self.experiments:
            return None
        experiment = self.experiments[0]
        remembered = arms.get(experiment.id)
        return experiment.id, remembered if remembered is not None else assign(self.secret, experiment, user_key)

    def on_event(self, state: ExperimentState, event: Event) -> list[Delta]:
        """A client's view exposes; a click, cart or purchase of an exposed item is attributed."""
        return state.on_event(event, self.by_id, self.secret, self.bounds)

    def expose(self, state: ExperimentState, choice: ArmChoice, user_key: str, ts: int,
               items: tuple[str, ...]) -> list[Delta]:
        """A list was emitted (or shadowed) for the user in ``choice``'s experiment."""
        return state.expose((choice.experiment,), user_key, self.secret, ts, items, self.bounds)


def by_experiment(deltas: Iterable[Delta]) -> dict[str, list[tuple[str, Counts]]]:
    """Deltas grouped by experiment (the metrics operator is keyed by experiment id), in order."""
    grouped: dict[str, list[tuple[str, Counts]]] = {}
    for experiment_id, arm, counts in deltas:
        grouped.setdefault(experiment_id, []).append((arm, counts))
    return grouped
