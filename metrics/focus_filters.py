"""The parameters of a FOCUS export, as a django-filter `FilterSet` bounded like `QueryParams`.

`start` and `end` are required, each an ISO 8601 date (midnight UTC) or date and time (naive means
UTC), between 2000-01-01 and 2100-01-01; `end` after `start`, at most `MAX_RANGE_DAYS` apart.
`team_alias` narrows to one team the caller may see. A parameter sent empty or twice is an error
naming it, as in the reports API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import django_filters

from llmcost_project.api_errors import MomentField, unbounded_fields

from .models import UsageEvent

MAX_RANGE_DAYS = 366


@dataclass(frozen=True)
class FocusQuery:
    start: datetime
    end: datetime
    team_alias: str | None


class MomentFilter(django_filters.Filter):
    field_class = MomentField


class FocusExportFilterSet(django_filters.FilterSet):
    start = MomentFilter(label="start", required=True)
    end = MomentFilter(label="end", required=True)
    team_alias = django_filters.CharFilter(label="team_alias", max_length=100)

    class Meta:
        model = UsageEvent
        fields: list[str] = []

    @classmethod
    def _refuse_unbounded(cls) -> None:
        unbounded = unbounded_fields({name: f.field_class(**f.extra) for name, f in cls.base_filters.items()})
        if unbounded:
            raise TypeError(f"{cls.__name__}: unbounded query parameters {unbounded}")

    def __init__(self, data=None, *args, **kwargs):
        super().__init__(data, *args, **kwargs)
        self._early_errors: dict[str, list[str]] = {}
        for name in self.filters:
            values = self.data.getlist(name) if hasattr(self.data, "getlist") else [self.data.get(name)]
            if len(values) > 1:
                self._early_errors[name] = ["give this parameter once"]
            elif name in self.data and not str(values[0]).strip():
                self._early_errors[name] = ["may not be blank"]

    def is_valid(self) -> bool:
        return self.is_bound and not self.errors

    @property
    def errors(self) -> dict[str, list[str]]:
        """Problems by parameter name; empty when valid."""
        errors = {name: list(messages) for name, messages in self.form.errors.items()}
        errors.update(self._early_errors)
        if not errors:
            start, end = self.form.cleaned_data["start"], self.form.cleaned_data["end"]
            if start >= end:
                errors["start"] = ["must be before end"]
            elif end - start > timedelta(days=MAX_RANGE_DAYS):
                errors["start"] = [f"the range may span at most {MAX_RANGE_DAYS} days"]
        return errors

    def focus_query(self) -> FocusQuery:
        """The parsed parameters; call only once `errors` is empty."""
        data = self.form.cleaned_data
        return FocusQuery(start=data["start"], end=data["end"], team_alias=data.get("team_alias") or None)


FocusExportFilterSet._refuse_unbounded()
