import secrets

from django import forms
from django.contrib import admin

from .models import (
    Budget,
    BudgetAlert,
    BudgetForecastAlert,
    NotificationChannel,
    NotificationDelivery,
    Reservation,
    SpendAnomalyAlert,
)
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


class NotificationChannelForm(forms.ModelForm):
    class Meta:
        model = NotificationChannel
        fields = ["organization", "name", "kind", "url", "emails", "teams", "event_types", "is_active"]
        # The model's validator allows only http(s); a plain text box never guesses a scheme.
        field_classes = {"url": forms.CharField}

    def clean(self):
        cleaned = super().clean() or {}
        organization, teams = cleaned.get("organization"), cleaned.get("teams") or []
        if organization is not None and any(team.organization_id != organization.pk for team in teams):
            self.add_error("teams", "A team belongs to another organization.")
        return cleaned


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    """The signing secret is never shown here: it was shown once, at creation (the Notifications
    page or `create_webhook`). A channel added here gets a fresh secret nobody has seen: delete and
    re-create it there to obtain one."""

    form = NotificationChannelForm
    list_display = ("__str__", "organization", "kind", "is_active", "created_at")
    list_filter = ("kind", "is_active", "organization")
    list_select_related = ("organization",)
    search_fields = ("name", "url", "organization__slug")
    filter_horizontal = ("teams",)
    readonly_fields = ("created_at",)

    def save_model(self, request, obj, form, change):
        if not obj.secret:
            obj.secret = secrets.token_urlsafe(32)
        super().save_model(request, obj, form, change)


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(admin.ModelAdmin):
    list_display = ("uuid", "event_type", "channel", "status", "attempts", "created_at", "last_status_code")
    list_filter = ("status", "event_type", "is_test")
    list_select_related = ("channel__organization",)
    search_fields = ("uuid", "event_key", "channel__name", "organization__slug")
    readonly_fields = [field.name for field in NotificationDelivery._meta.fields]

    def has_add_permission(self, request):
        return False  # deliveries come from events (and the Notifications page's test button) only


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


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ("pk", "organization", "team", "request_id", "amount", "cost", "state", "expires_at")
    list_filter = ("state", "organization")
    list_select_related = ("organization", "team__organization")
    search_fields = ("request_id", "user_id", "end_user")
    readonly_fields = [field.name for field in Reservation._meta.fields]

    def has_add_permission(self, request):
        return False  # reservations are taken through the API only, under the ledger locks
