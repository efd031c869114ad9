"""The parameters of the savings insights, as django-filter `FilterSet`s bounded as `QueryParams` requires.

The range (`start`/`end` or `time_range_hours`) and `team_alias` mean what they mean in the spend
report and are checked by the same `RangeFilterSet`, so a range the report refuses is refused here
with the same message. A parameter sent empty or twice is an error naming it.
"""

from __future__ import annotations

import django_filters

from .insights import InsightFilters
from .report_filters import RangeFilterSet, StrictFilterSet, _text

MODEL_MAX_LENGTH = 200


class SavingsFilterSet(RangeFilterSet):
    def insight_filters(self) -> InsightFilters:
        """The parsed parameters; call only once `errors` is empty."""
        data = self.form.cleaned_data
        start, end = self._range()
        return InsightFilters(start=start, end=end, team_alias=data.get("team_alias") or None,
                              query_type=data.get("query_type") or None)  # fmt: skip


class RecommendationsFilterSet(SavingsFilterSet):
    """The range and team_alias, as the other insights."""


class WhatIfFilterSet(SavingsFilterSet):
    model = django_filters.CharFilter(label="model", max_length=MODEL_MAX_LENGTH, required=True)
    alternative = django_filters.CharFilter(label="alternative", max_length=MODEL_MAX_LENGTH, required=True)
    query_type = _text("query_type", 100)


class ForecastFilterSet(StrictFilterSet):
    team_alias = _text("team_alias", 100)
