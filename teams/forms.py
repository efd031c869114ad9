"""Forms for the tenancy pages: tokens and members, and the role rules the member pages apply.

Role rules (owners and admins manage; the owner role is the owners' own business):
- only an owner may grant the owner role, or change or remove a member who is an owner;
- nobody may demote or remove the organization's last owner;
- a manager who sees only some teams may only hand out (and only edit members limited to)
  those teams, so no one grants more than they can see.
"""

from __future__ import annotations

from typing import cast

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordResetForm

from .access import AccessScope
from .models import Membership, Role, Team

LAST_OWNER = "The organization needs at least one owner: make someone else an owner first."


def team_label(team: Team) -> str:
    return team.alias if not team.name or team.name == team.alias else f"{team.alias} ({team.name})"


class TeamChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Team) -> str:
        return team_label(obj)


class TeamsChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Team) -> str:
        return team_label(obj)


# --- tokens -------------------------------------------------------------------------------------


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=200, help_text="What uses it, e.g. “production gateway”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    can_ingest = forms.BooleanField(required=False, initial=True, label="Ingest: send usage events")
    can_read = forms.BooleanField(required=False, label="Read: dashboard metrics, recent requests, budget checks")
    team = TeamChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="Every team (not pinned)",
        help_text="A pinned token records and reads this team only.",
    )

    def __init__(self, scope: AccessScope, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scope = scope
        team = cast(TeamChoiceField, self.fields["team"])
        team.queryset = scope.teams().order_by("alias")
        if scope.team_ids is not None:
            team.required = True
            team.empty_label = None
            team.help_text = "You see only some teams, so your tokens are pinned to one of them."

    def clean(self):
        cleaned = super().clean() or {}
        if not cleaned.get("can_ingest") and not cleaned.get("can_read"):
            self.add_error("can_ingest", "Give the token at least one scope.")
        return cleaned


# --- members ------------------------------------------------------------------------------------


def acting_role(scope: AccessScope) -> str:
    return scope.role or Role.VIEWER


def role_choices(scope: AccessScope) -> list[tuple[str, str]]:
    """The roles this manager may hand out (only owners hand out the owner role)."""
    if acting_role(scope) == Role.OWNER:
        return list(Role.choices)
    return [(value, label) for value, label in Role.choices if value != Role.OWNER]


def edit_refusal(scope: AccessScope, membership: Membership) -> str | None:
    """Why this manager may not change or remove this membership, or None when they may."""
    if membership.role == Role.OWNER and acting_role(scope) != Role.OWNER:
        return "Only owners can change or remove an owner."
    if scope.team_ids is not None:
        teams = {team.id for team in membership.teams.all()}
        if not teams or not teams <= scope.team_ids:
            return "This member sees teams you do not manage."
    return None


def is_last_owner(membership: Membership) -> bool:
    if membership.role != Role.OWNER:
        return False
    owners = Membership.objects.filter(organization_id=membership.organization_id, role=Role.OWNER)
    return not owners.exclude(pk=membership.pk).exists()


ROLE_HELP = (
    "Owners and admins manage tokens, budgets and members (only owners manage owners); "
    "members and viewers read dashboards."
)
TEAMS_HELP = "Leave all unticked to let them see every team."


class _MemberFields(forms.Form):
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER, help_text=ROLE_HELP)
    teams = TeamsChoiceField(
        queryset=Team.objects.none(), required=False, widget=forms.CheckboxSelectMultiple,
        label="Limit to teams", help_text=TEAMS_HELP,
    )

    def __init__(self, scope: AccessScope, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scope = scope
        cast(forms.ChoiceField, self.fields["role"]).choices = role_choices(scope)
        teams = cast(TeamsChoiceField, self.fields["teams"])
        teams.queryset = scope.teams().order_by("alias")
        if scope.team_ids is not None:
            teams.required = True
            teams.help_text = "You manage only some teams: pick at least one of them."
            self.fields["teams"].error_messages["required"] = "Pick at least one team."


class MemberAddForm(_MemberFields):
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    field_order = ["email", "role", "teams"]

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        already = Membership.objects.filter(organization=self.scope.organization, user__email__iexact=email)
        if already.exists():
            raise forms.ValidationError("Already a member: change their role or teams in the list below.")
        return email


class MemberEditForm(_MemberFields):
    def __init__(self, scope: AccessScope, membership: Membership, *args, **kwargs):
        initial = {"role": membership.role, "teams": list(membership.teams.all())}
        super().__init__(scope, *args, initial=initial, **kwargs)
        self.membership = membership

    def clean_role(self) -> str:
        role = self.cleaned_data["role"]
        if role != Role.OWNER and is_last_owner(self.membership):
            raise forms.ValidationError(LAST_OWNER)
        return role


# --- password reset -----------------------------------------------------------------------------


class InvitablePasswordResetForm(PasswordResetForm):
    """Password reset that also reaches people added from the members page.

    They are created without a password (an unusable one), which Django's form skips: with this
    form "Forgot your password?" is how they choose their first one. Inactive users still get nothing.
    """

    def get_users(self, email):
        user_model = get_user_model()
        email_field = user_model.get_email_field_name()
        users = user_model._default_manager.filter(**{f"{email_field}__iexact": email, "is_active": True})
        return (user for user in users if getattr(user, email_field, "").casefold() == email.casefold())


# --- declared dimensions ------------------------------------------------------------------------


class DimensionForm(forms.Form):
    key = forms.CharField(
        max_length=64, label="Metadata key", help_text="As your events carry it, e.g. feature, customer, environment.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

    def refuse(self, error) -> None:
        """Show a service's refusal (the key's rule, the limit, a duplicate) on the key field."""
        for message in error.messages:
            self.add_error("key", message)
