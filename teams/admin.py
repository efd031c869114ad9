from django import forms
from django.contrib import admin, messages

from .models import ApiToken, DeclaredDimension, Membership, Organization, Team
from .services import dimension_declare, token_create, token_revoke


class TeamChoicesMixin(admin.options.BaseModelAdmin):
    """Team choices name their organization (`org/alias`): read it with the teams, not once per option."""

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.related_model is Team:
            kwargs.setdefault("queryset", Team.objects.select_related("organization"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.related_model is Team:
            kwargs.setdefault("queryset", Team.objects.select_related("organization"))
        return super().formfield_for_manytomany(db_field, request, **kwargs)


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
    list_select_related = ("organization",)
    search_fields = ("alias", "name", "organization__slug")


@admin.register(Membership)
class MembershipAdmin(TeamChoicesMixin, admin.ModelAdmin):
    list_display = ("user", "organization", "role")
    list_filter = ("role", "organization")
    list_select_related = ("user", "organization")
    search_fields = ("user__email", "user__username", "organization__slug")
    filter_horizontal = ("teams",)


class ApiTokenAdminForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("organization", "team", "name", "can_ingest", "can_read", "revoked_at")

    def clean(self):
        cleaned = super().clean() or {}
        organization = cleaned.get("organization") or getattr(self.instance, "organization", None)
        team = cleaned.get("team")
        if team is not None and organization is not None and team.organization_id != organization.pk:
            self.add_error("team", "Pick a team of the token's organization.")
        return cleaned


@admin.register(ApiToken)
class ApiTokenAdmin(TeamChoicesMixin, admin.ModelAdmin):
    """Tokens are created here with their secret shown once in a message; the secret is never stored.

    A token never moves to another organization, and a pinned token's team is one of its own.
    """

    form = ApiTokenAdminForm

    list_display = (
        "display_prefix", "name", "organization", "team", "can_ingest", "can_read", "last_used_at", "revoked_at",
    )
    list_filter = ("can_ingest", "can_read", "organization")
    list_select_related = ("organization", "team__organization")  # a team names its organization
    search_fields = ("name", "lookup", "organization__slug")
    fields = ("organization", "team", "name", "can_ingest", "can_read", "revoked_at", "last_used_at", "display_prefix")
    readonly_fields = ("last_used_at", "display_prefix")
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        readonly = tuple(super().get_readonly_fields(request, obj))
        return ("organization", *readonly) if obj is not None else readonly

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


class DeclaredDimensionAdminForm(forms.ModelForm):
    """The model's own checks (the key's rule, the limit, the unique key) show on the form; the save
    goes through `dimension_declare`, which checks the limit again under a lock."""

    class Meta:
        model = DeclaredDimension
        fields = ("organization", "key")


@admin.register(DeclaredDimension)
class DeclaredDimensionAdmin(admin.ModelAdmin):
    """Declared metadata keys: added and deleted, never edited (a renamed key would be another key)."""

    form = DeclaredDimensionAdminForm
    list_display = ("key", "organization", "created_at")
    list_filter = ("organization",)
    list_select_related = ("organization",)
    search_fields = ("key", "organization__slug")

    def has_change_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        dimension = dimension_declare(organization=obj.organization, key=obj.key)
        obj.pk, obj.created_at = dimension.pk, dimension.created_at
        obj._state.adding = False
