"""The parameters of a spend report, as a django-filter `FilterSet`: one parser for the API and pages.

It parses and bounds the query string (every field bounded as `QueryParams` requires; a parameter
sent empty or twice is an error naming it), and hands back a `SpendQuery`; the events are selected
from it in one place, `metrics.reports.spend_events`, through the caller's access scope.

`metadata.<key>=<value>` parameters are not declared: each one the request sends becomes a filter
of this instance (at most `MAX_METADATA_FILTERS`, keys of `[A-Za-z0-9_.-]{1,64}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import django_filters
from django import forms

from llmcost_project.api_errors import MomentField, unbounded_fields

from .models import UsageEvent
from .reports import (
    DEFAULT_LIMIT,
    DIMENSIONS,
    MAX_GROUP_BY,
    MAX_LIMIT,
    MAX_METADATA_FILTERS,
    METADATA_KEY,
    METADATA_PREFIX,
    SpendFilters,
)

MAX_RANGE_HOURS = 24 * 366
DEFAULT_RANGE_HOURS = 24 * 30
METADATA_VALUE_MAX_LENGTH = 255
KEY_RULE = "keys are 1 to 64 characters of A-Z a-z 0-9 _ . -"


@dataclass(frozen=True)
class SpendQuery:
    filters: SpendFilters
    group_by: tuple[str, ...]
    limit: int


class MomentFilter(django_filters.Filter):
    field_class = MomentField


class IntegerFilter(django_filters.Filter):
    field_class = forms.IntegerField


def _text(name: str, max_length: int) -> django_filters.CharFilter:
    return django_filters.CharFilter(label=name, max_length=max_length)


class GroupByField(forms.CharField):
    """`group_by`: one or two dimensions, comma-separated (`team_alias,day`)."""

    def clean(self, value):
        value = super().clean(value)
        names = [name.strip() for name in value.split(",")]
        if len(names) > MAX_GROUP_BY:
            raise forms.ValidationError(f"group by at most {MAX_GROUP_BY} dimensions")
        for name in names:
            if name.startswith(METADATA_PREFIX):
                if not METADATA_KEY.fullmatch(name[len(METADATA_PREFIX):]):
                    raise forms.ValidationError(f"metadata.<key>: {KEY_RULE}")
            elif name not in DIMENSIONS:
                raise forms.ValidationError(
                    f"unknown dimension {name[:64]!r}; one of {', '.join(DIMENSIONS)} or metadata.<key>"
                )
        if len(set(names)) != len(names):
            raise forms.ValidationError("names a dimension twice")
        return tuple(names)


class GroupByFilter(django_filters.Filter):
    field_class = GroupByField


class StrictFilterSet(django_filters.FilterSet):
    """The API's query parameters as a django-filter FilterSet, with the rules of `QueryParams`: every
    parameter bounded (checked when the class is defined), and one sent empty or twice is an error
    naming it, not an omission. `errors` gathers them by parameter; `more_errors` adds a subclass's
    checks across parameters once each parameter is valid on its own."""

    class Meta:
        model = UsageEvent
        fields: list[str] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._refuse_unbounded()

    @classmethod
    def _refuse_unbounded(cls) -> None:
        unbounded = unbounded_fields({name: f.field_class(**f.extra) for name, f in cls.base_filters.items()})
        if unbounded:
            raise TypeError(f"{cls.__name__}: unbounded query parameters {unbounded}")

    def __init__(self, data=None, *args, **kwargs):
        super().__init__(data, *args, **kwargs)
        self._early_errors: dict[str, list[str]] = {}
        self.add_filters()
        for name in self.filters:
            values = self.data.getlist(name) if hasattr(self.data, "getlist") else [self.data.get(name)]
            if len(values) > 1:
                self._early_errors.setdefault(name, []).append("give this parameter once")
            elif name in self.data and not str(values[0]).strip():
                self._early_errors.setdefault(name, []).append("may not be blank")

    def add_filters(self) -> None:
        """Filters named by the request itself (before the blank and repeat checks run on them)."""

    def is_valid(self) -> bool:
        return self.is_bound and not self.errors

    @property
    def errors(self) -> dict[str, list[str]]:
        """Problems by parameter name; empty when valid."""
        errors = {name: list(messages) for name, messages in self.form.errors.items()}
        errors.update(self._early_errors)  # blank or repeated: the first problem of a parameter is enough
        if not errors:
            errors.update(self.more_errors())
        return errors

    def more_errors(self) -> dict[str, list[str]]:
        return {}


class RangeFilterSet(StrictFilterSet):
    """A time range, `start`/`end` or `time_range_hours` back from `end` (or now), and `team_alias`."""

    start = MomentFilter(label="start")
    end = MomentFilter(label="end")
    time_range_hours = IntegerFilter(label="time_range_hours", min_value=1, max_value=MAX_RANGE_HOURS)
    team_alias = _text("team_alias", 100)

    def more_errors(self) -> dict[str, list[str]]:
        return self._range_errors()

    def _range(self) -> tuple[datetime, datetime]:
        data = self.form.cleaned_data
        end = data.get("end") or datetime.now(UTC)
        hours = data.get("time_range_hours") or DEFAULT_RANGE_HOURS
        start = data.get("start") or end - timedelta(hours=hours)
        return start, end

    def _range_errors(self) -> dict[str, list[str]]:
        start, end = self._range()
        if start >= end:
            return {"start": ["must be before end"]}
        if end - start > timedelta(hours=MAX_RANGE_HOURS):
            return {"start": [f"the range may span at most {MAX_RANGE_HOURS} hours"]}
        return {}


class SpendReportFilterSet(RangeFilterSet):
    group_by = GroupByFilter(label="group_by", max_length=200, required=True)
    model_filter = _text("model_filter", 200)
    user_id = _text("user_id", 255)
    end_user = _text("end_user", 255)
    tag = _text("tag", 100)
    limit = IntegerFilter(label="limit", min_value=1, max_value=MAX_LIMIT)

    def add_filters(self) -> None:
        """`metadata.<key>` parameters: a filter each (their keys checked; at most a few)."""
        self._metadata_keys: list[str] = []
        for name in self.data:
            if not name.startswith(METADATA_PREFIX):
                continue
            key = name[len(METADATA_PREFIX):]
            if not METADATA_KEY.fullmatch(key):
                self._early_errors.setdefault("metadata", []).append(f"metadata.<key>: {KEY_RULE}")
                continue
            self._metadata_keys.append(key)
            self.filters[name] = _text(name, METADATA_VALUE_MAX_LENGTH)
        if len(self._metadata_keys) > MAX_METADATA_FILTERS:
            self._early_errors.setdefault("metadata", []).append(
                f"at most {MAX_METADATA_FILTERS} metadata.<key> filters"
            )

    def spend_query(self) -> SpendQuery:
        """The parsed parameters; call only once `errors` is empty."""
        data = self.form.cleaned_data
        start, end = self._range()
        filters = SpendFilters(
            start=start,
            end=end,
            team_alias=data.get("team_alias") or None,
            model=data.get("model_filter") or None,
            user_id=data.get("user_id") or None,
            end_user=data.get("end_user") or None,
            tag=data.get("tag") or None,
            metadata=tuple((key, data[f"{METADATA_PREFIX}{key}"]) for key in sorted(self._metadata_keys)),
        )
        return SpendQuery(filters=filters, group_by=data["group_by"], limit=data.get("limit") or DEFAULT_LIMIT)

