"""The parameters of a FOCUS export, as a django-filter `FilterSet` bounded like `QueryParams`.

`start` and `end` are required, each an ISO 8601 date (midnight UTC) or date and time (naive means
UTC), between 2000-01-01 and 2100-01-01; `end` after `start`, at most `MAX_RANGE_DAYS` apart.
`team_alias` narrows to one team the caller may see. A parameter sent empty or twice is an error
naming it, as in the reports API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .report_filters import MomentFilter, StrictFilterSet, _text

MAX_RANGE_DAYS = 366


@dataclass(frozen=True)
class FocusQuery:
    start: datetime
    end: datetime
    team_alias: str | None


class FocusExportFilterSet(StrictFilterSet):
    start = MomentFilter(label="start", required=True)
    end = MomentFilter(label="end", required=True)
    team_alias = _text("team_alias", 100)

    def more_errors(self) -> dict[str, list[str]]:
        start, end = self.form.cleaned_data["start"], self.form.cleaned_data["end"]
        if start >= end:
            return {"start": ["must be before end"]}
        if end - start > timedelta(days=MAX_RANGE_DAYS):
            return {"start": [f"the range may span at most {MAX_RANGE_DAYS} days"]}
        return {}

    def focus_query(self) -> FocusQuery:
        """The parsed parameters; call only once `errors` is empty."""
        data = self.form.cleaned_data
        return FocusQuery(start=data["start"], end=data["end"], team_alias=data.get("team_alias") or None)

