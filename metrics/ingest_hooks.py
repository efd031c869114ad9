"""What ingest tells the layers above metrics, and what they add to its answers.

metrics sits below billing's budgets part and imports none of its code. Budgets hear of ingest
here instead: the ingest API calls the registered budget answer for the organization, team and
user of the events it just recorded, and puts what it returns in its response (`budget` in
/api/v1/track, `budgets` per team in /api/v1/events). billing registers its answer from
BillingConfig.ready(). With none registered (metrics without billing's budgets part) the answer
is None: the fields are still there, as null, so a response has the same keys either way.

Listeners registered with `register_events_recorded` hear of every event stored (by any ingest
path: all go through usage_events_record) once its transaction has committed; billing's
reservations settle their holds there.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Protocol

from teams.models import Organization, Team

logger = logging.getLogger(__name__)


class BudgetAnswer(Protocol):
    def __call__(self, *, organization: Organization, team: Team | None, user_id: str | None) -> dict: ...


_budget_answer: BudgetAnswer | None = None


def register_budget_answer(answer: BudgetAnswer | None) -> None:
    """Make `answer` the budget answer ingest gives (None: no answer)."""
    global _budget_answer
    _budget_answer = answer


def budget_answer(*, organization: Organization, team: Team | None, user_id: str | None) -> dict | None:
    """The budgets' standing after ingest recorded events for this team and user, or None when no
    budgets part is registered."""
    if _budget_answer is None:
        return None
    return _budget_answer(organization=organization, team=team, user_id=user_id)


class EventsRecorded(Protocol):
    def __call__(self, organization_id: int, events: list[tuple[str, Decimal]]) -> None: ...


# Told of every event ingest stored, once its transaction committed (reservations settle on it).
_events_recorded: list[EventsRecorded] = []


def register_events_recorded(callback: EventsRecorded) -> None:
    """Call `callback(organization_id, [(request_id, cost), …])` after each ingest commits."""
    if callback not in _events_recorded:
        _events_recorded.append(callback)


def events_recorded_listened() -> bool:
    return bool(_events_recorded)


def events_recorded(organization_id: int, events: list[tuple[str, Decimal]]) -> None:
    """Tell every listener; one that fails is logged and does not stop the others (or ingest)."""
    for callback in _events_recorded:
        try:
            callback(organization_id, events)
        except Exception:
            logger.exception("an events-recorded listener failed")
