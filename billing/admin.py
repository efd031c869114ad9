from django.contrib import admin

from .models import Budget, BudgetAlert, Reservation
from .pricing import admin as pricing_admin  # noqa: F401  (registers the price admins)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("__str__", "organization", "team", "user_id", "amount_usd", "period", "is_hard", "is_active")
    list_filter = ("period", "is_hard", "is_active", "organization")
    list_select_related = ("organization", "team__organization")  # a team names its organization
    search_fields = ("name", "organization__slug", "team__alias", "user_id")
    raw_id_fields = ("team", "token")


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ("budget", "threshold", "period_start", "spend_usd", "limit_usd", "sent_at", "attempts")
    list_filter = ("threshold", "sent_at")
    list_select_related = ("budget__organization", "budget__team__organization")
    readonly_fields = [field.name for field in BudgetAlert._meta.fields]

    def has_add_permission(self, request):
        return False  # alerts are created by evaluation only, once per threshold and period



@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ("pk", "organization", "team", "request_id", "amount", "cost", "state", "expires_at")
    list_filter = ("state", "organization")
    list_select_related = ("organization", "team__organization")
    search_fields = ("request_id", "user_id", "end_user")
    readonly_fields = [field.name for field in Reservation._meta.fields]

    def has_add_permission(self, request):
        return False  # reservations are taken through the API only, under the ledger locks
