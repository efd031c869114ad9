from django.contrib import admin
from django.core.paginator import Paginator
from django.utils import timezone
from django.utils.functional import cached_property

from .models import BatchRun, CacheStat, JobFailure, RepriceRequest, SpendAnomaly, UsageEvent


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


class FailingFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("failing", "Failing now"), ("resolved", "Resolved")]

    def queryset(self, request, queryset):
        if self.value() == "failing":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(JobFailure)
class JobFailureAdmin(admin.ModelAdmin):
    """Background work that failed for one organization (see metrics.failures): what, since when,
    how often, the last error, and when it is retried. Rows are written by the jobs only."""

    list_display = ("job", "organization", "key", "state", "consecutive_failures", "total_failures",
                    "last_failed_at", "retry_at", "short_error")  # fmt: skip
    list_filter = (FailingFilter, "job")
    list_select_related = ("organization",)
    search_fields = ("organization__slug", "key", "last_error")
    ordering = ("resolved_at", "-last_failed_at")
    actions = ("retry_now",)

    @admin.display(description="state")
    def state(self, failure: JobFailure) -> str:
        return "resolved" if failure.resolved_at else "failing"

    @admin.display(description="last error")
    def short_error(self, failure: JobFailure) -> str:
        return failure.last_error.split("\n", 1)[0][:120]

    @admin.action(description="Retry at the next run")
    def retry_now(self, request, queryset):
        updated = queryset.filter(resolved_at__isnull=True).update(retry_at=timezone.now())
        self.message_user(request, f"{updated} failing unit(s) will be retried at the next run.")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the action above is the one change an admin makes


@admin.register(RepriceRequest)
class RepriceRequestAdmin(admin.ModelAdmin):
    """Repricing runs: written by a price change (a platform price, or an organization's override or
    discount); kept once finished as the record of what the run changed."""

    list_display = (
        "created_at", "organization", "reason", "provider", "model", "start", "end", "events_changed",
        "cost_before", "cost_after", "finished_at", "attempts", "not_before",
    )
    list_select_related = ("organization",)
    list_filter = (("finished_at", admin.EmptyFieldListFilter),)
    search_fields = ("reason", "provider", "model", "organization__slug")
    readonly_fields = (
        "organization", "reason", "provider", "model", "start", "end", "organization_ids", "events_changed",
        "cost_before", "cost_after", "finished_at", "attempts", "not_before", "claimed_at", "created_at",
    )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SpendAnomaly)
class SpendAnomalyAdmin(admin.ModelAdmin):
    """Hours of unusual team spend, as detection recorded them (metrics.anomalies)."""

    list_display = ("hour", "organization", "team", "spend_usd", "baseline_median_usd", "threshold_usd")
    list_select_related = ("organization", "team__organization")
    list_filter = ("organization",)
    readonly_fields = [field.name for field in SpendAnomaly._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
