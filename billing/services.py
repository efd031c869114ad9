"""Writes for budgets: creating them, evaluating spend against them and sending their alerts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db.models import F, Q
from django.template.loader import render_to_string

from metrics.failures import JobRun
from metrics.selectors import EventFilter, top_usage
from teams.access import AccessScope
from teams.models import Membership, Role

from .models import Budget, BudgetAlert, default_thresholds
from .notifications import budget_alert_notify, deliveries_send
from .selectors import BudgetStatus, budget_period, budget_spend, budget_status

logger = logging.getLogger(__name__)

# --- budgets ------------------------------------------------------------------------------------


def budget_create(
    *,
    organization,
    amount_usd: Decimal,
    period: str,
    team=None,
    user_id: str = "",
    thresholds: list[int] | None = None,
    is_hard: bool = False,
    extra_emails: list[str] | None = None,
    name: str = "",
) -> Budget:
    if team is not None and team.organization_id != organization.pk:
        raise ValueError("The team belongs to another organization.")
    if user_id and team is None:
        raise ValueError("A user budget needs a team.")
    amount_usd = Decimal(amount_usd)
    if not amount_usd.is_finite() or not 0 < amount_usd < Decimal("1e12"):
        raise ValueError("The amount must be a positive number of dollars below 1e12.")
    if amount_usd != amount_usd.quantize(Decimal("0.000001")):
        raise ValueError("The amount may have at most 6 decimal places.")
    thresholds = sorted(set(default_thresholds() if thresholds is None else thresholds))
    if not thresholds or any(not 0 < t <= 1000 for t in thresholds):
        raise ValueError("Thresholds are percentages between 1 and 1000, e.g. 50,80,100.")
    return Budget.objects.create(
        organization=organization, team=team, user_id=user_id, amount_usd=amount_usd, period=period,
        thresholds=thresholds, is_hard=is_hard, extra_emails=list(extra_emails or []), name=name,
    )


def budget_alert_recipients(budget: Budget) -> list[str]:
    """The organization's owners and admins who can see everything the budget covers, plus its
    extra addresses: for a team budget, those not limited to other teams; for an organization
    budget, only those not limited to some teams (its email names every team's users)."""
    memberships = Membership.objects.filter(
        organization_id=budget.organization_id, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True
    ).select_related("user")
    if budget.team_id is None:
        memberships = memberships.filter(teams__isnull=True)
    else:
        memberships = memberships.filter(Q(teams__isnull=True) | Q(teams=budget.team_id)).distinct()
    emails = [m.user.email for m in memberships if m.user.email]
    return sorted(set(emails) | set(budget.extra_emails or []))


def budgets_evaluate(*, now: datetime | None = None) -> int:
    """Record each threshold crossed in the current period, once; then send what is unsent.

    The unique (budget, period_start, threshold) row is the lock: however many workers evaluate
    at once, one row exists per crossing, and `budget_alerts_send` claims each row before sending.
    """
    now = now or datetime.now(UTC)
    created = 0
    run = JobRun(BUDGET_EVALUATE_JOB, now=now)
    for budget in Budget.objects.filter(is_active=True).select_related("organization", "team"):
        key = f"budget {budget.pk}"
        if not run.due(budget.organization_id, key):
            continue
        # One budget failing (recorded, retried later) never stops the others, nor the sending below.
        with run.unit(budget.organization_id, key):
            created += _budget_evaluate(budget, now)
    budget_alerts_send(now=now)
    deliveries_send(now=now)  # the beat's own delivery task retries what fails here
    return created


BUDGET_EVALUATE_JOB = "budget_evaluate"
BUDGET_ALERT_JOB = "budget_alert_send"


def _budget_evaluate(budget: Budget, now: datetime) -> int:
    status = budget_status(budget, now, fresh=True)
    Budget.objects.filter(pk=budget.pk).update(
        evaluated_spend_usd=status.spend, evaluated_period_start=status.period_start
    )
    created = 0
    for threshold in [t for t in budget.thresholds if status.spend * 100 >= budget.amount_usd * t]:
        alert, was_created = BudgetAlert.objects.get_or_create(
            budget=budget,
            period_start=status.period_start,
            threshold=threshold,
            defaults={"spend_usd": status.spend, "limit_usd": budget.amount_usd},
        )
        if was_created:
            # In the same transaction as the alert's row: the crossing and its deliveries (one per
            # channel) exist together or not at all, and a re-run finds the row and adds nothing.
            alert.budget = budget
            budget_alert_notify(alert, period_end=status.period_end, projection=status.projected_spend, now=now)
        created += was_created
    return created


CLAIM_TIMEOUT = timedelta(minutes=10)  # a claim older than this belonged to a worker that died
# A failing alert is retried at every run at first, then with a growing pause (up to an hour),
# and never given up: an SMTP outage delays alerts, it does not lose them.
RETRY_AT_EVERY_RUN = 5


def alert_retry_after(alert: BudgetAlert) -> datetime:
    pause = timedelta(minutes=min(2 ** (alert.attempts - RETRY_AT_EVERY_RUN), 60))
    return (alert.last_attempt_at or alert.created_at) + pause


def budget_alerts_send(*, now: datetime | None = None) -> int:
    """Send unsent alerts; each is claimed by a conditional update so only one worker sends it."""
    now = now or datetime.now(UTC)
    sent = 0
    run = JobRun(BUDGET_ALERT_JOB, now=now)
    pending = BudgetAlert.objects.filter(sent_at__isnull=True).select_related("budget__organization", "budget__team")
    for alert in pending:
        if alert.attempts >= RETRY_AT_EVERY_RUN and now < alert_retry_after(alert):
            continue
        claimed = (
            BudgetAlert.objects.filter(pk=alert.pk, sent_at__isnull=True)
            .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT))
            .update(claimed_at=now, last_attempt_at=now, attempts=F("attempts") + 1)
        )
        if claimed != 1:
            continue
        # Building the message reads the period's figures; anything failing (SMTP refused or timed
        # out, bad data) is recorded on the alert and as a JobFailure, and the next run retries it.
        with run.unit(alert.budget.organization_id, f"alert {alert.pk}") as outcome:
            recipients = budget_alert_recipients(alert.budget)
            if recipients:
                _alert_message(alert, recipients, now).send()
        if not outcome.ok:
            failure = run.last_error or "unknown error"
            logger.warning("Budget alert %s not sent: %s", alert.pk, failure)
            BudgetAlert.objects.filter(pk=alert.pk).update(claimed_at=None, last_error=failure)
            continue
        BudgetAlert.objects.filter(pk=alert.pk).update(sent_at=now, recipients=recipients, last_error="")
        sent += 1
    return sent


def _alert_message(alert: BudgetAlert, recipients: list[str], now: datetime) -> EmailMultiAlternatives:
    """The alert email, with the figures of the alert's own period (a retry may come after it ended)."""
    budget = alert.budget
    start, end = budget_period(budget, alert.period_start)
    spend = budget_spend(budget, start, end, now)
    status = BudgetStatus(budget=budget, period_start=start, period_end=end, spend=spend, now=min(now, end))
    scope = AccessScope(
        organization=budget.organization, team_ids=None if budget.team_id is None else frozenset([budget.team_id])
    )
    period = EventFilter(start=start, end=min(end, now), user_id=budget.user_id or None)
    zone = ZoneInfo(budget.organization.time_zone)
    team_query = f"?team={budget.team.alias}" if budget.team else ""
    context = {
        "alert": alert,
        "budget": budget,
        "status": status,
        "organization": budget.organization,
        "team": budget.team,
        "percent_used": round(status.fraction_used * 100, 1),
        # Formatted here: the template's date filter would convert to the server's zone.
        "period_label": f"{start.astimezone(zone):%Y-%m-%d %H:%M} to {end.astimezone(zone):%Y-%m-%d %H:%M}",
        "top_models": top_usage(scope=scope, filters=period, dimension="model"),
        "top_users": top_usage(scope=scope, filters=period, dimension="user_id"),
        "dashboard_url": f"{settings.SITE_URL}/o/{budget.organization.slug}/{team_query}",
    }
    subject = render_to_string("emails/budget_alert_subject.txt", context).strip()
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("emails/budget_alert.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
    )
    message.attach_alternative(render_to_string("emails/budget_alert.html", context), "text/html")
    return message
