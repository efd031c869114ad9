"""Writes for budgets: creating them, evaluating spend against them and sending their alerts."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db.models import F, Q
from django.template.loader import render_to_string

from billing.pricing.formatting import usd
from metrics.failures import JobRun
from metrics.models import SpendAnomaly
from metrics.selectors import EventFilter, top_usage
from teams.models import Membership, Organization, Role, Team

from .models import Budget, BudgetAlert, BudgetForecastAlert, SpendAnomalyAlert, default_thresholds
from .notifications import budget_alert_notify, deliveries_send, notify
from .selectors import BudgetStatus, budget_period, budget_scope, budget_spends, budget_status

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
    end_user: str = "",
    token=None,
    on_error: str = Budget.OnError.ALLOW,
) -> Budget:
    if team is not None and team.organization_id != organization.pk:
        raise ValueError("The team belongs to another organization.")
    if token is not None and token.organization_id != organization.pk:
        raise ValueError("The token belongs to another organization.")
    if on_error not in Budget.OnError.values:
        raise ValueError("on_error is allow or deny.")
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
        end_user=end_user, token=token, on_error=on_error,
    )


def budget_alert_recipients(budget: Budget) -> list[str]:
    """The organization's owners and admins who can see everything the budget covers, plus its
    extra addresses: for a team budget, those not limited to other teams; for an organization
    budget, only those not limited to some teams (its email names every team's users)."""
    return alert_recipients(budget.organization_id, budget.team_id, extra=budget.extra_emails or [])


def alert_recipients(organization_id: int, team_id: int | None, *, extra: Iterable[str] = ()) -> list[str]:
    """Owners and admins who see the team (team_id None: who see every team), plus `extra`."""
    memberships = Membership.objects.filter(
        organization_id=organization_id, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True
    ).select_related("user")
    if team_id is None:
        memberships = memberships.filter(teams__isnull=True)
    else:
        memberships = memberships.filter(Q(teams__isnull=True) | Q(teams=team_id)).distinct()
    emails = [m.user.email for m in memberships if m.user.email]
    return sorted(set(emails) | set(extra))


def budgets_evaluate(*, now: datetime | None = None) -> int:
    """Record each threshold crossed in the current period, once, and the period's forecast alert
    when the projection first exceeds the limit; an alert per new spend anomaly; then send what is
    unsent.

    The unique (budget, period_start, threshold) row is the lock: however many workers evaluate
    at once, one row exists per crossing, and `budget_alerts_send` claims each row before sending.
    Forecast rows are unique per (budget, period_start), anomaly alerts per anomaly.
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
    anomaly_alerts_record(now=now)
    early_alerts_send(now=now)
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
    forecast_alert_record(status)
    return created


CLAIM_TIMEOUT = timedelta(minutes=10)  # a claim older than this belonged to a worker that died
# A failing alert is retried at every run at first, then with a growing pause (up to an hour),
# and never given up: an SMTP outage delays alerts, it does not lose them.
RETRY_AT_EVERY_RUN = 5


def alert_retry_after(alert: BudgetAlert | BudgetForecastAlert | SpendAnomalyAlert) -> datetime:
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
    at = min(now, end)
    spend = budget_spends([budget], at, period_at=alert.period_start)[budget.pk]
    status = BudgetStatus.of(budget, spend, at)
    scope = budget_scope(budget)
    period = EventFilter(start=start, end=at, user_id=budget.user_id or None)
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


# --- forecast and anomaly alerts -----------------------------------------------------------------
#
# Two warnings that come before a limit is hit, each recorded as a row whose unique key is the lock
# (BudgetForecastAlert: budget + period; SpendAnomalyAlert: the anomaly, itself unique per team and
# hour), then claimed and sent like threshold alerts. `alert_event` turns either row into the
# (organization, team, event type, payload) a notification channel sends; email is the channel here.

FORECAST_ALERT_JOB = "budget_forecast_alert_send"
ANOMALY_ALERT_JOB = "spend_anomaly_alert"
# Anomalies older than this when first seen by alerting (say, after an outage) are not alerted on.
ANOMALY_ALERT_WITHIN = timedelta(days=1)


def forecast_alert_record(status: BudgetStatus) -> bool:
    """Record the period's forecast alert when the projection first exceeds the limit. Not once
    spend has reached the limit: the 100 % threshold alert says so, and a forecast would only repeat it."""
    if not settings.BUDGET_FORECAST_ALERTS or not status.projected_over or status.reached:
        return False
    runs_out = status.projected_runs_out_on
    assert runs_out is not None  # projected over and not reached: the limit falls within the period
    alert, created = BudgetForecastAlert.objects.get_or_create(
        budget=status.budget,
        period_start=status.period_start,
        defaults={
            "spend_usd": status.spend, "projected_spend_usd": status.projected_spend,
            "limit_usd": status.limit, "runs_out_on": runs_out,
        },
    )  # fmt: skip
    if created:
        _early_alert_notify(alert, key=f"forecast:{alert.pk}")
    return created


def _early_alert_notify(alert: BudgetForecastAlert | SpendAnomalyAlert, *, key: str) -> None:
    """Offer a new forecast or anomaly alert to the organization's channels, in the transaction
    that records it (so the alert and its deliveries exist together)."""
    event = alert_event(alert)
    notify(organization=event.organization, team=event.team, event_type=event.event_type, key=key,
           payload=event.payload)  # fmt: skip


def anomaly_alerts_record(*, now: datetime | None = None) -> int:
    """One alert row per recorded spend anomaly (metrics.anomalies finds them), per organization isolated."""
    now = now or datetime.now(UTC)
    run = JobRun(ANOMALY_ALERT_JOB, now=now)
    created = 0
    fresh = SpendAnomaly.objects.filter(alert__isnull=True, hour__gte=now - ANOMALY_ALERT_WITHIN)
    by_organization: dict[int, list[SpendAnomaly]] = {}
    for anomaly in fresh.order_by("hour", "id"):
        by_organization.setdefault(anomaly.organization_id, []).append(anomaly)
    for organization_id, anomalies in by_organization.items():
        if not run.due(organization_id, "record"):
            continue
        with run.unit(organization_id, "record"):
            for anomaly in anomalies:
                alert, made = SpendAnomalyAlert.objects.get_or_create(anomaly=anomaly)
                if made:
                    _early_alert_notify(alert, key=f"anomaly:{anomaly.pk}")
                created += made
    return created


@dataclass(frozen=True)
class AlertEvent:
    """What any notification channel needs to send one alert."""

    organization: Organization
    team: Team | None
    event_type: str
    subject: str
    payload: dict
    lines: list[tuple[str, str]]  # what the email lists, as (label, value)


def alert_event(alert: BudgetForecastAlert | SpendAnomalyAlert) -> AlertEvent:
    """The event of a forecast or anomaly alert row: the one function a channel dispatcher calls
    (email here; Slack and webhooks send the same payload)."""
    if isinstance(alert, BudgetForecastAlert):
        return _forecast_event(alert)
    return _anomaly_event(alert)


def _money(value: Decimal) -> str:
    """Money in a payload: a decimal string to the micro-dollar, as the APIs give it."""
    return str(value.quantize(Decimal("0.000001")))


def _where(organization: Organization, team: Team | None, user_id: str = "") -> str:
    return " / ".join(
        part for part in (organization.name or organization.slug, team.alias if team else "", user_id) if part
    )


def _forecast_event(alert: BudgetForecastAlert) -> AlertEvent:
    budget = alert.budget
    organization, team = budget.organization, budget.team
    start, end = budget_period(budget, alert.period_start)
    team_query = f"?team={team.alias}" if team else ""
    payload = {
        "event": BudgetForecastAlert.EVENT_TYPE,
        "organization": {"slug": organization.slug, "name": organization.name, "time_zone": organization.time_zone},
        "team": team.alias if team else None,
        "budget": {
            "id": budget.pk, "name": budget.name, "user_id": budget.user_id or None, "period": budget.period,
            "hard": budget.is_hard,
        },
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "spend": _money(alert.spend_usd),
        "limit": _money(alert.limit_usd),
        "projection": _money(alert.projected_spend_usd),
        "runs_out_on": alert.runs_out_on.isoformat(),
        "link": f"{settings.SITE_URL}/o/{organization.slug}/{team_query}",
    }  # fmt: skip
    subject = (
        f"[llmcost] {_where(organization, team, budget.user_id)}: the {budget.get_period_display().lower()} "
        f"budget is projected to run out on {alert.runs_out_on.isoformat()}"
    )
    zone = ZoneInfo(organization.time_zone)
    lines = [
        ("Budget", budget.name or budget.scope_label),
        ("Period", f"{start.astimezone(zone):%Y-%m-%d %H:%M} to {end.astimezone(zone):%Y-%m-%d %H:%M}"),
        ("Time zone", organization.time_zone),
        ("Spend so far", usd(alert.spend_usd)),
        ("Limit", usd(alert.limit_usd) + (" (hard)" if budget.is_hard else "")),
        ("Projected at period end", usd(alert.projected_spend_usd)),
        ("Projected to run out on", alert.runs_out_on.isoformat()),
    ]
    return AlertEvent(organization, team, BudgetForecastAlert.EVENT_TYPE, subject, payload, lines)


def _anomaly_event(alert: SpendAnomalyAlert) -> AlertEvent:
    anomaly = alert.anomaly
    organization, team = anomaly.organization, anomaly.team
    local = anomaly.hour.astimezone(ZoneInfo(organization.time_zone))
    payload = {
        "event": SpendAnomalyAlert.EVENT_TYPE,
        "organization": {"slug": organization.slug, "name": organization.name, "time_zone": organization.time_zone},
        "team": team.alias,
        "hour": anomaly.hour.isoformat(),
        "hour_local": local.isoformat(),
        "spend": _money(anomaly.spend_usd),
        "baseline": _money(anomaly.baseline_median_usd),
        "spread": _money(anomaly.baseline_mad_usd),
        "threshold": _money(anomaly.threshold_usd),
        "link": f"{settings.SITE_URL}/o/{organization.slug}/?team={team.alias}",
    }
    subject = (
        f"[llmcost] {_where(organization, team)}: unusual spend at {local:%Y-%m-%d %H:00} ({organization.time_zone})"
    )
    lines = [
        ("Team", team.alias),
        ("Hour", f"{local:%Y-%m-%d %H:00} ({organization.time_zone})"),
        ("Spend in the hour", usd(anomaly.spend_usd)),
        ("Usual for that hour (median of the previous 7 days)", usd(anomaly.baseline_median_usd)),
        ("Alert threshold", usd(anomaly.threshold_usd)),
    ]
    return AlertEvent(organization, team, SpendAnomalyAlert.EVENT_TYPE, subject, payload, lines)


def _early_alert_recipients(alert: BudgetForecastAlert | SpendAnomalyAlert) -> list[str]:
    if isinstance(alert, BudgetForecastAlert):
        return budget_alert_recipients(alert.budget)
    return alert_recipients(alert.anomaly.organization_id, alert.anomaly.team_id)


def _early_alert_message(event: AlertEvent, recipients: list[str]) -> EmailMultiAlternatives:
    context = {"event": event, "payload": event.payload, "organization": event.organization, "team": event.team}
    message = EmailMultiAlternatives(
        subject=event.subject,
        body=render_to_string("emails/early_alert.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
    )
    message.attach_alternative(render_to_string("emails/early_alert.html", context), "text/html")
    return message


def early_alerts_send(*, now: datetime | None = None) -> int:
    """Send unsent forecast and anomaly alerts, each claimed by a conditional update (one worker sends it)."""
    now = now or datetime.now(UTC)
    sent = 0
    forecasts = BudgetForecastAlert.objects.filter(sent_at__isnull=True)
    anomalies = SpendAnomalyAlert.objects.filter(sent_at__isnull=True)
    pending: list[tuple[type[BudgetForecastAlert] | type[SpendAnomalyAlert], list]] = [
        (BudgetForecastAlert, list(forecasts.select_related("budget__organization", "budget__team"))),
        (SpendAnomalyAlert, list(anomalies.select_related("anomaly__organization", "anomaly__team"))),
    ]
    run = JobRun(FORECAST_ALERT_JOB, now=now)
    for model, alerts in pending:
        for alert in alerts:
            if alert.attempts >= RETRY_AT_EVERY_RUN and now < alert_retry_after(alert):
                continue
            claimed = (
                model.objects.filter(pk=alert.pk, sent_at__isnull=True)
                .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT))
                .update(claimed_at=now, last_attempt_at=now, attempts=F("attempts") + 1)
            )
            if claimed != 1:
                continue
            event = alert_event(alert)
            with run.unit(event.organization.pk, f"{event.event_type} {alert.pk}") as outcome:
                recipients = _early_alert_recipients(alert)
                if recipients:
                    _early_alert_message(event, recipients).send()
            if not outcome.ok:
                failure = run.last_error or "unknown error"
                logger.warning("%s alert %s not sent: %s", event.event_type, alert.pk, failure)
                model.objects.filter(pk=alert.pk).update(claimed_at=None, last_error=failure)
                continue
            model.objects.filter(pk=alert.pk).update(sent_at=now, recipients=recipients, last_error="")
            sent += 1
    return sent
