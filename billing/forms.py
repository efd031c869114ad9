"""The budget form: one form for creating and editing, with errors next to the fields they concern."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import cast

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from teams.access import AccessScope
from teams.forms import TeamChoiceField
from teams.models import ApiToken, Team

from .models import Budget, default_thresholds

MAX_AMOUNT = Decimal("1e12")
SEPARATORS = re.compile(r"[\s,;]+")


def _items(raw: str) -> list[str]:
    return [item for item in SEPARATORS.split(raw or "") if item]


def email_list(raw: str) -> list[str]:
    """Addresses separated by spaces, commas or semicolons, each valid, once each, in order."""
    emails = _items(raw)
    bad = []
    for email in emails:
        try:
            validate_email(email)
        except ValidationError:
            bad.append(email)
    if bad:
        raise ValidationError(f"Not an email address: {', '.join(bad)}.")
    return list(dict.fromkeys(emails))


def token_label(token: ApiToken) -> str:
    """A token by its name and lookup prefix (the only part of it ever shown; the secret is not kept)."""
    label = f"{token.name} ({token.display_prefix}…)" if token.name else f"{token.display_prefix}…"
    return f"{label}, revoked" if token.revoked_at is not None else label


class TokenChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ApiToken) -> str:
        return token_label(obj)


class BudgetForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, help_text="Shown in alerts, e.g. “Chatbot monthly”.")
    team = TeamChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="Whole organization",
        help_text="The budget counts this team's spend, or the whole organization's.",
    )
    user_id = forms.CharField(
        max_length=255, required=False, label="User ID",
        help_text="Limit one user within the team: the user_id your events carry.",
    )
    end_user = forms.CharField(
        max_length=255, required=False, label="End user",
        help_text="Limit one end user (a customer of your product): the end_user your events and reservations "
                  "carry; within the team if one is picked.",
    )
    token = TokenChoiceField(
        queryset=ApiToken.objects.none(), required=False, label="API token", empty_label="Any token",
        help_text="Limit every call sent with this API token; within the team if one is picked.",
    )
    amount_usd = forms.DecimalField(
        label="Limit (USD)", max_digits=18, decimal_places=6,
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0", "inputmode": "decimal"}),
    )
    period = forms.ChoiceField(choices=Budget.Period.choices, initial=Budget.Period.MONTHLY,
                               help_text="Periods follow the organization's time zone.")
    thresholds = forms.CharField(
        label="Alert at (% of limit)", initial="50, 80, 100", max_length=200,
        help_text="Percentages separated by commas; an email goes out when spend crosses each.",
    )
    extra_emails = forms.CharField(
        label="Also email", required=False, max_length=2000,
        widget=forms.TextInput(attrs={"placeholder": "finance@example.com, lead@example.com"}),
        help_text="Owners and admins who see the budget's team always get alerts.",
    )
    is_hard = forms.BooleanField(
        label="Hard limit", required=False,
        help_text="Once reached, budget checks answer “not allowed” (events are still recorded).",
    )
    on_error = forms.ChoiceField(
        label="When reservations cannot reach the database", choices=Budget.OnError.choices,
        initial=Budget.OnError.ALLOW,
        help_text="Matters only for a hard limit, and only for reservations: allow calls, or deny them, "
                  "while the database cannot be reached.",
    )
    is_active = forms.BooleanField(label="Active", required=False, initial=True)

    field_order = [
        "team", "user_id", "end_user", "token", "name", "amount_usd", "period", "is_hard", "on_error", "thresholds",
        "extra_emails", "is_active",
    ]

    def __init__(self, scope: AccessScope, *args, instance: Budget | None = None, **kwargs):
        if instance is not None:
            kwargs.setdefault(
                "initial",
                {
                    "name": instance.name,
                    "team": instance.team_id,
                    "user_id": instance.user_id,
                    "end_user": instance.end_user,
                    "token": instance.token_id,
                    "on_error": instance.on_error,
                    "amount_usd": format(instance.amount_usd.normalize(), "f"),
                    "period": instance.period,
                    "thresholds": ", ".join(str(t) for t in instance.thresholds),
                    "extra_emails": ", ".join(instance.extra_emails or []),
                    "is_hard": instance.is_hard,
                    "is_active": instance.is_active,
                },
            )
        super().__init__(*args, **kwargs)
        self.scope = scope
        self.instance = instance
        team = cast(TeamChoiceField, self.fields["team"])
        team.queryset = scope.teams().order_by("alias")
        if scope.team_ids is not None:
            team.required = True
            team.empty_label = None
            team.help_text = "You manage only some teams, so budgets are set per team."
        # The organization's active tokens this manager may see (a manager of some teams: the tokens
        # pinned to them), and the budget's own token, so editing never drops it silently.
        tokens = scope.filter(ApiToken.objects.filter(revoked_at__isnull=True))
        if instance is not None and instance.token_id is not None:
            tokens = tokens | ApiToken.objects.filter(pk=instance.token_id, organization=scope.organization)
        cast(TokenChoiceField, self.fields["token"]).queryset = tokens.order_by("name", "lookup")

    def clean_amount_usd(self) -> Decimal:
        amount = self.cleaned_data["amount_usd"]
        if amount <= 0:
            raise ValidationError("Enter an amount above zero.")
        if amount >= MAX_AMOUNT:
            raise ValidationError("Enter an amount below $1,000,000,000,000.")
        return amount

    def clean_thresholds(self) -> list[int]:
        items = _items(self.cleaned_data["thresholds"])
        if not items:
            return default_thresholds()
        values = []
        for item in items:
            try:
                value = int(item.rstrip("%"))
            except ValueError:
                raise ValidationError(f"“{item}” is not a whole number; write percentages like 50, 80, 100.") from None
            if not 0 < value <= 1000:
                raise ValidationError(f"{value} is out of range: use percentages between 1 and 1000.")
            values.append(value)
        return sorted(set(values))

    def clean_extra_emails(self) -> list[str]:
        return email_list(self.cleaned_data["extra_emails"])

    def clean_user_id(self) -> str:
        return self.cleaned_data["user_id"].strip()

    def clean_end_user(self) -> str:
        return self.cleaned_data["end_user"].strip()

    def clean_token(self) -> ApiToken | None:
        token = self.cleaned_data["token"]
        # The choices already hold only this organization's tokens; a budget never names another's.
        if token is not None and token.organization_id != self.scope.organization.pk:
            raise ValidationError("Select a valid choice. That choice is not one of the available choices.")
        return token

    def clean(self):
        cleaned = super().clean() or {}
        if cleaned.get("user_id") and not cleaned.get("team") and "team" not in self.errors:
            self.add_error("user_id", "A user budget needs a team: pick the team whose events carry this user.")
        return cleaned

    def values(self) -> dict:
        data = self.cleaned_data
        return {
            "name": data["name"], "team": data["team"], "user_id": data["user_id"] if data["team"] else "",
            "amount_usd": data["amount_usd"], "period": data["period"], "thresholds": data["thresholds"],
            "extra_emails": data["extra_emails"], "is_hard": data["is_hard"], "end_user": data["end_user"],
            "token": data["token"], "on_error": data["on_error"],
        }
