"""The form that adds a notification channel, with errors next to the fields they concern."""

from __future__ import annotations

from typing import cast

from django import forms

from teams.access import AccessScope
from teams.forms import TeamsChoiceField
from teams.models import Team

from .forms import email_list
from .models import EVENT_TYPES, NotificationChannel
from .safe_http import HTTP_URL

EVENT_LABELS = {
    "budget.threshold": "Budget thresholds (budget.threshold)",
    "budget.forecast": "Budget forecasts (budget.forecast)",
    "spend.anomaly": "Spend anomalies (spend.anomaly)",
}


class ChannelForm(forms.Form):
    kind = forms.ChoiceField(choices=NotificationChannel.Kind.choices, initial=NotificationChannel.Kind.WEBHOOK)
    name = forms.CharField(max_length=200, required=False, help_text="Shown in the list, e.g. “#ml-costs”.")
    url = forms.CharField(
        label="URL",
        max_length=2000,
        required=False,
        widget=forms.URLInput(attrs={"placeholder": "https://hooks.slack.com/services/…"}),
        help_text="For a webhook or Slack channel: the http(s) address to post to.",
    )
    emails = forms.CharField(
        label="Email addresses",
        max_length=2000,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "ml-leads@example.com, oncall@example.com"}),
        help_text="For an email channel.",
    )
    teams = TeamsChoiceField(
        queryset=Team.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Only for teams",
        help_text="None ticked: every team and organization-wide budgets.",
    )
    event_types = forms.MultipleChoiceField(
        choices=[(name, EVENT_LABELS[name]) for name in EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Only for events",
        help_text="None ticked: every event.",
    )

    def __init__(self, scope: AccessScope, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cast(TeamsChoiceField, self.fields["teams"]).queryset = scope.teams().order_by("alias")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        if url:
            HTTP_URL(url)  # only http(s): never file:, ftp: or any other scheme
        return url

    def clean_emails(self) -> list[str]:
        return email_list(self.cleaned_data["emails"])

    def clean(self):
        cleaned = super().clean() or {}
        kind = cleaned.get("kind")
        if kind == NotificationChannel.Kind.EMAIL:
            if not cleaned.get("emails") and "emails" not in self.errors:
                self.add_error("emails", "An email channel needs at least one address.")
        elif kind and not cleaned.get("url") and "url" not in self.errors:
            self.add_error("url", "Give the http(s) URL to post to.")
        return cleaned
