from django.contrib import admin, messages

from .models import ApiToken, Membership, Organization, Team
from .services import token_create, token_revoke


class TeamInline(admin.TabularInline):
    model = Team
    extra = 0
    fields = ("alias", "name", "is_default")


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "time_zone", "auto_create_teams", "created_at")
    search_fields = ("slug", "name")
    inlines = [TeamInline]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("alias", "name", "organization", "is_default")
    list_filter = ("organization",)
    search_fields = ("alias", "name", "organization__slug")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "role")
    list_filter = ("role", "organization")
    search_fields = ("user__email", "user__username", "organization__slug")
    filter_horizontal = ("teams",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created here with their secret shown once in a message; the secret is never stored."""

    list_display = (
        "display_prefix", "name", "organization", "team", "can_ingest", "can_read", "last_used_at", "revoked_at",
    )
    list_filter = ("can_ingest", "can_read", "organization")
    search_fields = ("name", "lookup", "organization__slug")
    fields = ("organization", "team", "name", "can_ingest", "can_read", "revoked_at", "last_used_at", "display_prefix")
    readonly_fields = ("last_used_at", "display_prefix")
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        token, raw = token_create(
            organization=obj.organization, team=obj.team, can_ingest=obj.can_ingest, can_read=obj.can_read,
            name=obj.name, created_by=request.user,
        )
        obj.pk, obj.lookup, obj.digest = token.pk, token.lookup, token.digest
        obj._state.adding = False
        messages.warning(request, f"Copy this token now; it will not be shown again: {raw}")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            token_revoke(token=token)
