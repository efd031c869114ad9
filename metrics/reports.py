"""Spend by any dimension (`GET /api/v1/reports/spend`): requests, tokens, cost and errors grouped by
one or two dimensions of the events.

For now every report reads raw events (`UsageEvent`), so its sums are exactly the events' sums, and
it sees only what raw retention keeps (`RAW_EVENT_RETENTION_DAYS`). Serving whole days from rollups
(with declared metadata keys and tags rolled up) is a later step; the answer's shape will not change.

One pipeline for every grouping: the ORM selects the caller's events (through the access scope and
the filters) with one column per dimension and per figure; one statement around it groups them in
the database, joining each event to its distinct tags when grouping by tag (see
`llmcost_project.json_arrays`). The total, the top rows and the rest (`other`) come from the same
inner query, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection
from django.db.models import Case, F, IntegerField, QuerySet, TextField, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, NullIf, TruncDay, TruncHour

from billing.pricing.money import from_units
from llmcost_project.db import exact_sum_function
from llmcost_project.json_arrays import ArrayContains, array_elements, first_occurrence
from teams.access import AccessScope
from teams.models import METADATA_KEY  # the one definition of a metadata key

from .models import UsageEvent
from .selectors import IS_ERROR, EventFilter, scoped_events

# Dimensions a report groups by; `metadata.<key>` besides these.
DIMENSIONS = ("team_alias", "model", "provider", "user_id", "end_user", "query_type", "tag", "day", "hour")
METADATA_PREFIX = "metadata."
MAX_GROUP_BY = 2
MAX_METADATA_FILTERS = 5
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000

# The figures of every row, the total and `other`, in answer order.
COUNTS = ("requests", "prompt_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "total_tokens", "errors")
MONEY = ("cost", "list_cost")
FIGURES = ("requests", "prompt_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "total_tokens",
           "cost", "list_cost", "errors")


def list_cost():
    """An event's list cost: the platform's price, or the billed cost when there is none (no platform
    price matched its model), so cost and list cost always sum the same events. Reports and the FOCUS
    export (`metrics.focus`) both use this one spelling."""
    return Coalesce("list_cost", "cost")


def is_dimension(name: str) -> bool:
    if name.startswith(METADATA_PREFIX):
        return METADATA_KEY.fullmatch(name[len(METADATA_PREFIX):]) is not None
    return name in DIMENSIONS


@dataclass(frozen=True)
class SpendFilters:
    """Which events a report sums: the caller's scope narrowed by these (each None: no narrowing)."""

    start: datetime
    end: datetime
    team_alias: str | None = None
    model: str | None = None  # a model family, as the dashboard's model_filter
    user_id: str | None = None
    end_user: str | None = None
    tag: str | None = None
    metadata: tuple[tuple[str, str], ...] = field(default=())  # (key, value as text)


def metadata_text(key: str):
    """A metadata value as text, the same on both databases: strings as themselves, numbers and
    booleans as JSON spells them (`3`, `1.5`, `true`); a missing key, JSON null (and the text "null")
    read as NULL. Nested objects and arrays read as their JSON text (spacing differs by database)."""
    return NullIf(Cast(KeyTextTransform(key, "metadata"), TextField()), Value("null"), output_field=TextField())


def _blank_is_null(name: str):
    """Text columns store "not sent" as ""; a report shows it as null."""
    return NullIf(F(name), Value(""), output_field=TextField())


def spend_events(*, scope: AccessScope, filters: SpendFilters) -> QuerySet[UsageEvent]:
    """The events a report sums. A team_alias the caller cannot see is a 404, as on the dashboard."""
    events = scoped_events(
        scope=scope,
        filters=EventFilter(start=filters.start, end=filters.end, team_alias=filters.team_alias,
                            model=filters.model, user_id=filters.user_id),
    )
    if filters.end_user is not None:
        events = events.filter(end_user=filters.end_user)
    if filters.tag is not None:
        events = events.filter(ArrayContains(F("tags"), Value(filters.tag)))
    for index, (key, value) in enumerate(filters.metadata):
        events = events.alias(**{f"metadata_filter_{index}": metadata_text(key)}).filter(
            **{f"metadata_filter_{index}": value}
        )
    return events


def _dimension_expression(name: str, zone: ZoneInfo):
    if name.startswith(METADATA_PREFIX):
        return metadata_text(name[len(METADATA_PREFIX):])
    if name == "team_alias":
        return F("team__alias")
    if name == "model":
        return F("model")
    if name in ("provider", "user_id", "end_user", "query_type"):
        return _blank_is_null(name)
    if name == "day":
        return TruncDay("timestamp", tzinfo=zone)
    if name == "hour":
        return TruncHour("timestamp", tzinfo=zone)
    raise ValueError(f"not a dimension: {name}")


def _event_columns(events: QuerySet[UsageEvent], group_by: tuple[str, ...], zone: ZoneInfo) -> tuple[str, list]:
    """SQL of one row per event: its dimension values (k0, k1; the tags array for `tag`) and the
    figures a row sums (`list_cost`: the platform price, or the billed cost when there is none)."""
    keys = {f"k{index}": _dimension_expression(name, zone) for index, name in enumerate(group_by) if name != "tag"}
    figures = {
        "f_cost": F("cost"),
        "f_list_cost": list_cost(),
        "f_error": Case(When(IS_ERROR, then=1), default=0, output_field=IntegerField()),
        **{f"f_{name}": F(name) for name in COUNTS if name not in ("requests", "errors")},
    }
    columns = [*keys, *figures]
    if "tag" in group_by:
        keys["k_tags"] = F("tags")
        columns.append("k_tags")
    rows = events.order_by().annotate(**keys, **figures).values(*columns)
    sql, params = rows.query.sql_with_params()
    return sql, list(params)


def _sums_sql(source: str) -> str:
    total = exact_sum_function(connection)  # exact integer sums on SQLite too
    parts = ["COUNT(*) AS requests"]
    parts += [f"{total}({source}.f_{name}) AS {name}" for name in COUNTS if name not in ("requests", "errors")]
    parts += [f"{total}({source}.f_cost) AS cost", f"{total}({source}.f_list_cost) AS list_cost",
              f"{total}({source}.f_error) AS errors"]
    return ", ".join(parts)


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name in FIGURES:
        value = row.get(name)
        if name in MONEY:
            figures[name] = from_units(value or 0)
        else:
            figures[name] = int(value or 0)
    return figures


def _minus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {name: a[name] - b[name] for name in FIGURES}


def _zero() -> dict[str, Any]:
    return {name: (Decimal(0) if name in MONEY else 0) for name in FIGURES}


def _key_value(name: str, value: Any, zone: ZoneInfo) -> Any:
    """A grouped value as the answer shows it: `day` as the local date, `hour` as an ISO 8601 time
    with the organization's offset; text as text. (Read through a raw cursor, a truncated time is
    the local wall-clock time: a datetime on PostgreSQL, text on SQLite.)"""
    if value is None or name not in ("day", "hour"):
        return value if value is None else str(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    local = value.replace(tzinfo=None).replace(tzinfo=zone)
    return local.date().isoformat() if name == "day" else local.isoformat()


def _fetch(sql: str, params: list) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def spend_report(*, scope: AccessScope, filters: SpendFilters, group_by: tuple[str, ...], limit: int) -> dict:
    """Figures per group (cost descending, then key), the total over the events, and the groups past
    `limit` summed in one last row marked `other` (none when every group is shown).

    Grouped by `tag`, an event counts once in each of its distinct tags' rows (an event without tags
    in the null row), so rows can sum to more than the total; `other` is then the rest of the rows'
    sum, not the total minus the rows shown.
    """
    if not 1 <= len(group_by) <= MAX_GROUP_BY or not all(is_dimension(name) for name in group_by):
        raise ValueError(f"group_by must be one or two dimensions: {group_by}")
    if len(set(group_by)) != len(group_by):
        raise ValueError(f"group_by names a dimension twice: {group_by}")
    zone = ZoneInfo(scope.organization.time_zone)
    events = spend_events(scope=scope, filters=filters)
    inner, params = _event_columns(events, group_by, zone)

    # Every statement below is built from fixed names; values travel as parameters.
    total = _figures(_fetch(f"SELECT {_sums_sql('e')} FROM ({inner}) AS e", params)[0])  # noqa: S608

    keys = [f"k{index}" for index in range(len(group_by))]
    key_sql, join = [], ""
    for index, name in enumerate(group_by):
        if name == "tag":
            key_sql.append("t.value")
            join = (f"LEFT JOIN {array_elements('e.k_tags', 't', connection)} "
                    f"ON {first_occurrence('e.k_tags', 't', connection)}")
        else:
            key_sql.append(f"e.k{index}")
    selected = ", ".join(f"{sql} AS {key}" for sql, key in zip(key_sql, keys, strict=True))
    grouped = (
        f"SELECT {selected}, {_sums_sql('e')} FROM ({inner}) AS e {join} GROUP BY {', '.join(key_sql)}"  # noqa: S608
    )
    order = ", ".join(["g.cost DESC", *(f"g.{key} ASC NULLS FIRST" for key in keys)])
    top = _fetch(f"SELECT * FROM ({grouped}) AS g ORDER BY {order} LIMIT %s", [*params, limit + 1])  # noqa: S608

    other = None
    if len(top) > limit:
        top = top[:limit]
        every = ", ".join(
            ["COUNT(*) AS groups"]
            + [f"{exact_sum_function(connection)}(g.{name}) AS {name}" for name in FIGURES]
        )
        summary = _fetch(f"SELECT {every} FROM ({grouped}) AS g", params)[0]  # noqa: S608
        shown = _zero()
        for row in top:
            shown = {name: shown[name] + value for name, value in _figures(row).items()}
        other = {"groups": int(summary["groups"]) - len(top), **_minus(_figures(summary), shown)}

    rows = [
        {"key": {name: _key_value(name, row[key], zone) for name, key in zip(group_by, keys, strict=True)},
         **_figures(row)}
        for row in top
    ]
    if other is not None:  # the one `other` row, last; `other: true` tells it from a value "other"
        rows.append({"key": dict.fromkeys(group_by, "other"), "other": True, **other})
    return {
        "group_by": list(group_by),
        "rows": rows,
        "total": total,
        "start": filters.start,
        "end": filters.end,
    }
