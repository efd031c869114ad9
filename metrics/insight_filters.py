"""The parameters of the savings insights, as django-filter `FilterSet`s bounded as `QueryParams` requires.

The range (`start`/`end` or `time_range_hours`) and `team_alias` mean what they mean in the spend
report, and are checked by the report's own rules (the range methods are the report FilterSet's), so a
range the report refuses is refused here with the same message. A parameter sent empty or twice is an
error naming it.
"""

from __future__ import annotations

import django_filters

from .insights import InsightFilters
from .models import UsageEvent
from .report_filters import MAX_RANGE_HOURS, IntegerFilter, MomentFilter, SpendReportFilterSet, _text

MODEL_MAX_LENGTH = 200


class SavingsFilterSet(django_filters.FilterSet):
    start = MomentFilter(label="start")
    end = MomentFilter(label="end")
    time_range_hours = IntegerFilter(label="time_range_hours", min_value=1, max_value=MAX_RANGE_HOURS)
    team_alias = _text("team_alias", 100)

    class Meta:
        model = UsageEvent
        fields: list[str] = []

    # One range rule and one error shape with the spend report.
    _refuse_unbounded = SpendReportFilterSet.__dict__["_refuse_unbounded"]  # the classmethod, unbound
    is_valid = SpendReportFilterSet.is_valid
    errors = SpendReportFilterSet.errors
    _range = SpendReportFilterSet._range
    _range_errors = SpendReportFilterSet._range_errors

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._refuse_unbounded()

    def __init__(self, data=None, *args, **kwargs):
        super().__init__(data, *args, **kwargs)
        self._early_errors: dict[str, list[str]] = {}
        for name in self.filters:
            values = self.data.getlist(name) if hasattr(self.data, "getlist") else [self.data.get(name)]
            if len(values) > 1:
                self._early_errors.setdefault(name, []).append("give this parameter once")
            elif name in self.data and not str(values[0]).strip():
                self._early_errors.setdefault(name, []).append("may not be blank")

    def insight_filters(self) -> InsightFilters:
        """The parsed parameters; call only once `errors` is empty."""
        data = self.form.cleaned_data
        start, end = self._range()
        return InsightFilters(start=start, end=end, team_alias=data.get("team_alias") or None,
                              query_type=data.get("query_type") or None)  # fmt: skip


class WhatIfFilterSet(SavingsFilterSet):
    model = django_filters.CharFilter(label="model", max_length=MODEL_MAX_LENGTH, required=True)
    alternative = django_filters.CharFilter(label="alternative", max_length=MODEL_MAX_LENGTH, required=True)
    query_type = _text("query_type", 100)

    class Meta(SavingsFilterSet.Meta):
        pass


SavingsFilterSet._refuse_unbounded()
