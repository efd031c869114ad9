from django.contrib import admin
from django.core.paginator import Paginator
from django.utils.functional import cached_property

from .models import BatchRun, CacheStat, UsageEvent


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows: a COUNT(*) over millions of events takes seconds, and nobody pages
    that far (filter or search instead). The changelist then reads "10001 results" at most."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list[: self.CAP + 1].count()  # type: ignore[attr-defined]  # COUNT(*) over a LIMITed subquery


class NoFullCountAdmin(admin.ModelAdmin):
    """Event tables grow to millions of rows: no full-table COUNT(*), no sort or filter that scans them.

    No facet counts either. Newest first by primary key (an index walk), not by timestamp, which is
    only indexed after the organization; columns are not sortable for the same reason; list filters
    have fixed choices.
    """

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts would COUNT the whole table once per choice
    paginator = CappedCountPaginator
    list_per_page = 50
    list_select_related = ("organization", "team__organization")  # a team names its organization
    ordering = ("-id",)
    sortable_by = ()


class StatusFilter(admin.SimpleListFilter):
    """The status choices are fixed: no SELECT DISTINCT over the events table to find them."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return UsageEvent.Status.choices

    def queryset(self, request, queryset):
        return queryset.filter(status=self.value()) if self.value() else queryset


@admin.register(UsageEvent)
class UsageEventAdmin(NoFullCountAdmin):
    list_display = ("timestamp", "request_id", "organization", "team", "model", "total_tokens", "cost", "status")
    list_filter = (StatusFilter, "is_priced", "cache_hit", "organization")
    search_fields = ("=request_id",)
    raw_id_fields = ("organization", "team", "price")


@admin.register(CacheStat)
class CacheStatAdmin(NoFullCountAdmin):
    list_display = ("timestamp", "organization", "team", "cache_hit", "cache_miss", "avg_cache_lookup_time_ms")
    list_filter = ("organization",)
    raw_id_fields = ("organization", "team")


@admin.register(BatchRun)
class BatchRunAdmin(NoFullCountAdmin):
    list_display = ("timestamp", "batch_id", "organization", "team", "batch_size", "batch_cost", "status")
    list_filter = ("organization",)
    search_fields = ("=batch_id",)
    raw_id_fields = ("organization", "team")
