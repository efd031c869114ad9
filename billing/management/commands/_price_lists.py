"""What the price list commands share: finding the organization, reading numbers and times."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from teams.models import Organization


def organization(slug: str) -> Organization:
    found = Organization.objects.filter(slug=slug).first()
    if found is None:
        raise CommandError(f"No organization {slug!r}.")
    return found


def number(value: str | None, flag: str) -> Decimal | None:
    if value is None:
        return None
    try:
        parsed = Decimal(value.strip())
    except InvalidOperation:
        raise CommandError(f"{flag} must be a number, e.g. 2.5 (got {value!r}).") from None
    if not parsed.is_finite():
        raise CommandError(f"{flag} must be a number, e.g. 2.5 (got {value!r}).")
    return parsed


def moment(value: str | None, flag: str) -> datetime | None:
    """An ISO 8601 date or time; without an offset it is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(f"{flag} must be an ISO 8601 date or time, e.g. 2026-01-01 or "
                           f"2026-01-01T09:00:00+02:00 (got {value!r}).") from None  # fmt: skip
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def refused(error: ValidationError) -> CommandError:
    flags = {
        "input_per_mtok": "--input",
        "output_per_mtok": "--output",
        "cache_read_per_mtok": "--cache-read",
        "cache_write_per_mtok": "--cache-write",
        "effective_from": "--from",
        "effective_until": "--until",
        "provider": "--provider",
        "model": "--model",
        "percent": "PERCENT",
    }
    if hasattr(error, "error_dict"):
        parts = [f"{flags.get(name, name)}: {' '.join(messages)}" for name, messages in error.message_dict.items()]
    else:
        parts = list(error.messages)
    return CommandError("; ".join(parts))


def window(start: datetime, end: datetime | None) -> str:
    return f"from {start.isoformat()}" + (f" until {end.isoformat()}" if end else " (open-ended)")
