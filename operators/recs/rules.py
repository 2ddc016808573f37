"""Business rules applied to blended candidates, and the re-emission test; each is a small pure function."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from itertools import islice

from operators.recs.user import UserRecState

CHECKOUT = "checkout"


def in_checkout(user: UserRecState, now_ts: int, timeout_ms: int) -> bool:
    """A checkout is open: started, not yet ended by a purchase, and less than ``timeout_ms`` old.

    Recommending then would distract from paying (the seeds' critical journey); a checkout left
    open for ``timeout_ms`` counts as abandoned, so recommendations come back.
    """
    return user.checkout_ts > 0 and now_ts - user.checkout_ts < timeout_ms


def exclusion(user: UserRecState, exclude: Container[str], exclude_purchased: bool) -> Callable[[str], bool]:
    """Whether an item must never be recommended: the caller's exclusions (e.g. already seen) and,
    if configured, the user's purchases. A predicate, so large exclusion sets are never copied."""
    purchased: Container[str] = user.purchased if exclude_purchased else ()
    return lambda item: item in exclude or item in purchased


def cap_per_category(ranked: Iterable[str], category_of: Callable[[str], str], cap: int, k: int) -> list[str]:
    """The first ``k`` items of ``ranked`` with at most ``cap`` per category (0: no cap; no category: uncapped).

    A capped item is skipped, not moved down: a list may come out shorter than ``k`` when the
    candidates are that concentrated.
    """
    if cap <= 0 or k <= 0:
        return list(islice(ranked, max(k, 0)))
    taken: list[str] = []
    per_category: dict[str, int] = {}
    for item in ranked:
        category = category_of(item)
        if category:
            if per_category.get(category, 0) >= cap:
                continue
            per_category[category] = per_category.get(category, 0) + 1
        taken.append(item)
        if len(taken) >= k:
            break
    return taken


def promoted(pinned: Sequence[str], allowed: Callable[[str], bool], k: int) -> list[str]:
    """The pinned items that go on top of the list, in their configured order, at most ``k``.

    A pinned item is dropped when ``allowed`` says so (unavailable, bought, excluded by the
    caller): promotion never overrides those rules.
    """
    return [item for item in dict.fromkeys(pinned) if allowed(item)][:k]


def changed_meaningfully(previous: Sequence[str], current: Sequence[str], min_change: float,
                         head: int = 3) -> bool:
    """Worth re-emitting: the first ``head`` items changed (order included), or at least ``min_change``
    of the longer list's items are not in the other list.

    Scores drift on every event; re-sending a list whose visible top and membership are the same
    would only load Kafka and Redis.
    """
    if list(previous[:head]) != list(current[:head]):
        return True
    longest = max(len(previous), len(current))
    if longest == 0:
        return False
    return 1.0 - len(set(previous) & set(current)) / longest >= min_change
