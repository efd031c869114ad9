from django.contrib import admin

from .models import Budget, BudgetAlert, BudgetForecastAlert, SpendAnomalyAlert
from .pricing import admin as pricing_admin  # noqa: F401  (registers the price admins)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("__str__", "organization", "team", "user_id", "amount_usd", "period", "is_hard", "is_active")
    list_filter = ("period", "is_hard", "is_active", "organization")
    list_select_related = ("organization", "team__organization")  # a team names its organization
    search_fields = ("name", "organization__slug", "team__alias", "user_id")
    raw_id_fields = ("team",)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ("budget", "threshold", "period_start", "spend_usd", "limit_usd", "sent_at", "attempts")
    list_filter = ("threshold", "sent_at")
    list_select_related = ("budget__organization", "budget__team__organization")
    readonly_fields = [field.name for field in BudgetAlert._meta.fields]

    def has_add_permission(self, request):
        return False  # alerts are created by evaluation only, once per threshold and period



@admin.register(BudgetForecastAlert)
class BudgetForecastAlertAdmin(admin.ModelAdmin):
    list_display = ("budget", "period_start", "projected_spend_usd", "limit_usd", "runs_out_on", "sent_at", "attempts")
    list_filter = ("sent_at",)
    list_select_related = ("budget__organization", "budget__team__organization")
    readonly_fields = [field.name for field in BudgetForecastAlert._meta.fields]

    def has_add_permission(self, request):
        return False  # created by evaluation only, once per budget and period


@admin.register(SpendAnomalyAlert)
class SpendAnomalyAlertAdmin(admin.ModelAdmin):
    list_display = ("anomaly", "created_at", "sent_at", "attempts", "last_error")
    list_filter = ("sent_at",)
    list_select_related = ("anomaly",)
    readonly_fields = [field.name for field in SpendAnomalyAlert._meta.fields]

    def has_add_permission(self, request):
        return False  # created once per recorded anomaly
