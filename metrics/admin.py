from django.contrib import admin

from .models import BatchRun, CacheStat, UsageEvent


class NoFullCountAdmin(admin.ModelAdmin):
    """Event tables grow to millions of rows: no full-table COUNT(*) on the changelist."""

    show_full_result_count = False
    list_per_page = 50
    list_select_related = ("organization", "team")


@admin.register(UsageEvent)
class UsageEventAdmin(NoFullCountAdmin):
    list_display = ("timestamp", "request_id", "organization", "team", "model", "total_tokens", "cost", "status")
    list_filter = ("status", "is_priced", "cache_hit")
    search_fields = ("=request_id",)
    raw_id_fields = ("organization", "team", "price")
    ordering = ("-timestamp",)


@admin.register(CacheStat)
class CacheStatAdmin(NoFullCountAdmin):
    list_display = ("timestamp", "organization", "team", "cache_hit", "cache_miss", "avg_cache_lookup_time_ms")
    raw_id_fields = ("organization", "team")


@admin.register(BatchRun)
class BatchRunAdmin(NoFullCountAdmin):
    list_display = ("timestamp", "batch_id", "organization", "team", "batch_size", "batch_cost", "status")
    search_fields = ("=batch_id",)
    raw_id_fields = ("organization", "team")
