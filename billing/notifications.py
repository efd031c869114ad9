"""Writes for notification channels: creating them, turning events into deliveries, and sending those.

An event (a budget threshold today; forecasts and anomalies later) is offered to the organization's
channels with `notify`, which creates one `NotificationDelivery` per channel that wants it. The
unique (channel, event_key) row is the lock: however often an event is offered, each channel gets
one delivery. `deliveries_send` (every minute, by a beat task) claims each due delivery with a
conditional update, so two workers never attempt the same one at once, and sends it.

Retries: 5xx, 429, timeouts and refused or dropped connections are retried with a growing pause
(30 s, 1 min, 2 min ... at most an hour) for `NOTIFICATION_RETRY_HOURS` (24) after the event, then
the delivery is marked failed. Any other answer (a 3xx or 4xx) means the channel is misconfigured:
failed at once, as is a URL whose host resolves to a non-public address (billing/safe_http.py).
The body, and its X-Llmcost-Delivery id, are the same on every attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse

from billing.pricing.formatting import usd
from metrics.failures import JobRun

from . import safe_http
from .models import EVENT_TYPES, BudgetAlert, NotificationChannel, NotificationDelivery

logger = logging.getLogger(__name__)

DELIVERY_JOB = "notification_delivery"
CLAIM_TIMEOUT = timedelta(minutes=5)  # a claim older than this belonged to a worker that died
FIRST_PAUSE = timedelta(seconds=30)
LONGEST_PAUSE = timedelta(hours=1)
REQUEST_TIMEOUT_SECONDS = 5
SWEEP_BATCH = 500
# One sweep stops taking new deliveries after this long, so a run of dead endpoints (5 s each)
# never holds a worker past the next beat; the rest are due again at the next run.
SWEEP_SECONDS = 50
USER_AGENT = "llmcost-notifications/1"
ERROR_TEXT_MAX = 2000


# --- channels -----------------------------------------------------------------------------------


def channel_create(
    *,
    organization,
    kind: str,
    url: str = "",
    emails: Iterable[str] = (),
    teams: Iterable = (),
    event_types: Iterable[str] = (),
    name: str = "",
) -> tuple[NotificationChannel, str]:
    """Create a channel and return it with its signing secret, which is shown to no one again.

    Raises ValidationError naming the field (a non-http(s) URL, an unknown event type, a team of
    another organization)."""
    teams = list(teams)
    if any(team.organization_id != organization.pk for team in teams):
        raise ValidationError({"teams": "A team belongs to another organization."})
    secret = secrets.token_urlsafe(32)
    channel = NotificationChannel(
        organization=organization, kind=kind, url=url.strip() if kind != NotificationChannel.Kind.EMAIL else "",
        emails=sorted(set(emails)) if kind == NotificationChannel.Kind.EMAIL else [],
        event_types=[t for t in EVENT_TYPES if t in set(event_types)] if event_types else [],
        name=name, secret=secret,
    )  # fmt: skip
    unknown = set(event_types) - set(EVENT_TYPES)
    if unknown:
        raise ValidationError({"event_types": f"Unknown event types: {', '.join(sorted(unknown))}."})
    channel.full_clean(exclude=["secret"])
    channel.save()
    if teams:
        channel.teams.set(teams)
    return channel, secret


# --- events -------------------------------------------------------------------------------------


def notify(
    *,
    organization,
    team,
    event_type: str,
    key: str,
    payload: dict,
    budget_alert: BudgetAlert | None = None,
    now: datetime | None = None,
) -> int:
    """Offer an event to the organization's active channels; return how many deliveries were created.

    `key` identifies the event (offering it again creates nothing). A channel limited to some
    teams takes only events of those teams: an organization-wide event (team None) sums every
    team's figures, so it goes only to channels not limited to teams.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"Unknown event type {event_type!r}.")
    now = now or datetime.now(UTC)
    channels = NotificationChannel.objects.filter(organization=organization, is_active=True)
    if team is None:
        channels = channels.filter(teams__isnull=True)
    else:
        channels = channels.filter(Q(teams__isnull=True) | Q(teams=team)).distinct()
    rows = [
        NotificationDelivery(
            organization=organization,
            channel=channel,
            event_type=event_type,
            event_key=f"{event_type}:{key}",
            payload=payload,
            budget_alert=budget_alert,
            created_at=now,
            next_attempt_at=now,
        )
        for channel in channels
        if channel.wants(event_type)
    ]
    if not rows:
        return 0
    existing = NotificationDelivery.objects.filter(event_key=f"{event_type}:{key}")
    before = existing.count()
    NotificationDelivery.objects.bulk_create(rows, ignore_conflicts=True)  # the unique row decides
    return existing.count() - before


def _money(value) -> str:
    return format(Decimal(value), "f")


def budget_threshold_payload(alert: BudgetAlert, *, period_end: datetime, projection: Decimal | None) -> dict:
    """What a `budget.threshold` event says: every figure as the alert recorded it."""
    budget = alert.budget
    organization, team = budget.organization, budget.team
    if team is not None:
        link = reverse("team", kwargs={"org_slug": organization.slug, "alias": team.alias})
    else:
        link = reverse("budgets", kwargs={"org_slug": organization.slug})
    where = organization.name if team is None else f"{organization.name} / {team.alias}"
    if budget.user_id:
        where += f" user {budget.user_id}"
    summary = (
        f"{where}: {alert.threshold}% of the {budget.period} budget{f' “{budget.name}”' if budget.name else ''}"
        f" reached — {usd(alert.spend_usd)} of {usd(alert.limit_usd)}"
    )
    return {
        "organization": {"slug": organization.slug, "name": organization.name},
        "team": None if team is None else {"alias": team.alias, "name": team.name},
        "budget": {
            "id": budget.pk,
            "name": budget.name,
            "user_id": budget.user_id or None,
            "period": budget.period,
            "hard": budget.is_hard,
        },
        "period": {"start": alert.period_start.isoformat(), "end": period_end.isoformat()},
        "threshold": alert.threshold,
        "currency": "USD",
        "spend": _money(alert.spend_usd),
        "limit": _money(alert.limit_usd),
        "projection": None if projection is None else _money(projection),
        "link": f"{settings.SITE_URL}{link}",
        "summary": summary,
    }


def budget_alert_notify(
    alert: BudgetAlert, *, period_end: datetime, projection: Decimal | None = None, now: datetime | None = None
) -> int:
    """Offer a newly crossed threshold to the channels (once: the key is the alert's own unique row)."""
    budget = alert.budget
    return notify(
        organization=budget.organization, team=budget.team, event_type="budget.threshold",
        key=f"alert:{alert.pk}", budget_alert=alert, now=now,
        payload=budget_threshold_payload(alert, period_end=period_end, projection=projection),
    )  # fmt: skip


def channel_test(channel: NotificationChannel, *, now: datetime | None = None) -> NotificationDelivery:
    """Create a test delivery for one channel (an example threshold event) and attempt it once, now."""
    if not channel.is_active:
        raise ValueError("The channel is paused.")
    now = now or datetime.now(UTC)
    organization = channel.organization
    team = channel.teams.order_by("alias").first()
    event_type = channel.event_types[0] if channel.event_types else "budget.threshold"
    payload = {
        "organization": {"slug": organization.slug, "name": organization.name},
        "team": None if team is None else {"alias": team.alias, "name": team.name},
        "budget": {"id": None, "name": "Example budget", "user_id": None, "period": "monthly", "hard": False},
        "period": {"start": now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).isoformat(), "end": None},
        "threshold": 80,
        "currency": "USD",
        "spend": "80.000000",
        "limit": "100.000000",
        "projection": None,
        "link": f"{settings.SITE_URL}{reverse('notifications', kwargs={'org_slug': organization.slug})}",
        "summary": f"Test from llmcost for {organization.name}: this channel receives {event_type} events.",
    }
    delivery = NotificationDelivery.objects.create(
        organization=organization, channel=channel, event_type=event_type, event_key=f"test:{uuid.uuid4()}",
        payload=payload, is_test=True, created_at=now, next_attempt_at=now,
    )  # fmt: skip
    deliveries_send(now=now, only=[delivery.pk])
    delivery.refresh_from_db()
    return delivery


# --- sending ------------------------------------------------------------------------------------


def retry_pause(attempts: int) -> timedelta:
    """30 s after the first failure, doubling, at most an hour."""
    return min(FIRST_PAUSE * 2 ** max(attempts - 1, 0), LONGEST_PAUSE)


def retry_window() -> timedelta:
    return timedelta(hours=settings.NOTIFICATION_RETRY_HOURS)


def request_body(delivery: NotificationDelivery) -> bytes:
    """The exact bytes posted (and signed): the same on every attempt of a delivery."""
    if delivery.channel.kind == NotificationChannel.Kind.SLACK:
        body = slack_message(delivery)
    else:
        body = {
            "event": delivery.event_type,
            "delivery": str(delivery.uuid),
            "created_at": delivery.created_at.isoformat(),
            "test": delivery.is_test,
            **delivery.payload,
        }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def slack_message(delivery: NotificationDelivery) -> dict:
    """Slack's incoming-webhook shape: `text` (notifications, old clients) plus `blocks`."""
    payload = delivery.payload
    text = ("[test] " if delivery.is_test else "") + payload.get("summary", delivery.event_type)
    fields = []
    if payload.get("spend") is not None and payload.get("limit") is not None:
        fields.append({"type": "mrkdwn", "text": f"*Spend*\n{usd(Decimal(payload['spend']))}"})
        fields.append({"type": "mrkdwn", "text": f"*Limit*\n{usd(Decimal(payload['limit']))}"})
    if payload.get("projection") is not None:
        fields.append({"type": "mrkdwn", "text": f"*Projected*\n{usd(Decimal(payload['projection']))}"})
    if payload.get("team"):
        fields.append({"type": "mrkdwn", "text": f"*Team*\n{payload['team']['alias']}"})
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(text)}}]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    if payload.get("link"):
        blocks.append({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"<{payload['link']}|Open in llmcost> · {delivery.event_type}"}],
        })  # fmt: skip
    return {"text": text, "blocks": blocks}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass
class Attempt:
    delivered: bool
    retry: bool = False
    status_code: int | None = None
    error: str = ""
    retry_after: timedelta | None = None


def _post(delivery: NotificationDelivery) -> Attempt:
    channel = delivery.channel
    body = request_body(delivery)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Llmcost-Event": delivery.event_type,
        "X-Llmcost-Delivery": str(delivery.uuid),
        "X-Llmcost-Signature": signature(channel.secret, body),
    }
    try:
        # Redirects are not followed: a receiver that moved is a configuration to fix, and following
        # one would re-send a signed POST to wherever it points (a private address included).
        answer = safe_http.post(channel.url, body=body, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)
    except safe_http.NonPublicAddress as exc:
        # Checked on save too, but DNS may have changed since: nothing was sent, and retrying would
        # only ask the same resolver again, so the delivery fails at once.
        return Attempt(delivered=False, retry=False, error=str(exc))
    except ValueError as exc:  # a URL stored before it was validated
        return Attempt(delivered=False, retry=False, error=f"Invalid URL: {exc}")
    except (OSError, http.client.HTTPException) as exc:  # timeouts, refused or dropped connections, DNS, TLS
        return Attempt(delivered=False, retry=True, error=f"{type(exc).__name__}: {exc}")
    if 200 <= answer.status < 300:
        return Attempt(delivered=True, status_code=answer.status)
    detail = answer.body[:300].decode(errors="replace").strip()
    error = f"HTTP {answer.status}{f': {detail}' if detail else ''}"
    if answer.status == 429 or answer.status >= 500:
        return Attempt(delivered=False, retry=True, status_code=answer.status, error=error,
                       retry_after=_retry_after(answer.retry_after))  # fmt: skip
    return Attempt(delivered=False, retry=False, status_code=answer.status, error=error)


def _retry_after(value: str | None) -> timedelta | None:
    if value and value.strip().isdigit():
        return min(timedelta(seconds=int(value.strip())), LONGEST_PAUSE)
    return None


def _email(delivery: NotificationDelivery) -> Attempt:
    payload = delivery.payload
    context = {"delivery": delivery, "payload": payload}
    subject = "[llmcost] " + ("[test] " if delivery.is_test else "") + payload.get("summary", delivery.event_type)
    message = EmailMessage(
        subject=subject[:200].replace("\n", " "),
        body=render_to_string("emails/notification.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=list(delivery.channel.emails),
        headers={"X-Llmcost-Event": delivery.event_type, "X-Llmcost-Delivery": str(delivery.uuid)},
    )
    message.send()  # SMTP errors raise: the caller retries them as it does a 5xx
    return Attempt(delivered=True)


def deliveries_send(*, now: datetime | None = None, only: list[int] | None = None) -> int:
    """Attempt every due delivery once; return how many were delivered.

    Each delivery is claimed by a conditional update, so a delivery is attempted by one worker at
    a time, and each runs isolated: one channel failing (or raising) never stops the others.
    """
    now = now or datetime.now(UTC)
    started = time.monotonic()
    run = JobRun(DELIVERY_JOB, now=now)
    due = (
        NotificationDelivery.objects.filter(status=NotificationDelivery.Status.PENDING, next_attempt_at__lte=now)
        .filter(channel__is_active=True)
        .select_related("channel")
        .order_by("next_attempt_at", "id")
    )
    if only is not None:
        due = due.filter(pk__in=only)
    delivered = 0
    for delivery in due[:SWEEP_BATCH]:
        if time.monotonic() - started > SWEEP_SECONDS:
            break
        claimed = (
            NotificationDelivery.objects.filter(
                pk=delivery.pk, status=NotificationDelivery.Status.PENDING, next_attempt_at__lte=now
            )
            .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT))
            .update(claimed_at=now, last_attempt_at=now, attempts=F("attempts") + 1)
        )
        if claimed != 1:
            continue
        delivery.attempts += 1
        attempt = Attempt(delivered=False, retry=True, error="unknown error")
        # Network outcomes are answers, not job failures; anything else raised (SMTP refused, bad
        # data) is recorded as a JobFailure and retried like a 5xx.
        with run.unit(delivery.organization_id, f"delivery {delivery.pk}", atomic=False) as outcome:
            if delivery.channel.kind == NotificationChannel.Kind.EMAIL:
                attempt = _email(delivery)
            else:
                attempt = _post(delivery)
        if not outcome.ok:
            attempt = Attempt(delivered=False, retry=True, error=run.last_error or "unknown error")
        delivered += _record(delivery, attempt, now)
    return delivered


def _record(delivery: NotificationDelivery, attempt: Attempt, now: datetime) -> int:
    status = NotificationDelivery.Status
    mine = NotificationDelivery.objects.filter(pk=delivery.pk, status=status.PENDING)
    if attempt.delivered:
        mine.update(status=status.DELIVERED, finished_at=now, claimed_at=None, last_status_code=attempt.status_code,
                    last_error="")  # fmt: skip
        return 1
    error = attempt.error[:ERROR_TEXT_MAX]
    # A test is one attempt, answered on the page at once: it is never retried behind the user's back.
    if attempt.retry and not delivery.is_test and now < delivery.created_at + retry_window():
        pause = max(retry_pause(delivery.attempts), attempt.retry_after or timedelta(0))
        mine.update(claimed_at=None, next_attempt_at=now + pause, last_status_code=attempt.status_code,
                    last_error=error)  # fmt: skip
        logger.info("Delivery %s to channel %s failed (attempt %s), retried in %s: %s",
                    delivery.pk, delivery.channel_id, delivery.attempts, pause, error)  # fmt: skip
        return 0
    if attempt.retry and not delivery.is_test:
        error = f"Gave up after {settings.NOTIFICATION_RETRY_HOURS} h of retries. Last error: {error}"
    mine.update(status=status.FAILED, finished_at=now, claimed_at=None, last_status_code=attempt.status_code,
                last_error=error)  # fmt: skip
    logger.warning("Delivery %s to channel %s failed: %s", delivery.pk, delivery.channel_id, error)
    return 0
