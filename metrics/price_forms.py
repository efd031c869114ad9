"""Forms of the Prices page: an override, a discount, the end of either, and the price search.

Field names are the models' own, so what the price list services refuse lands next to the
field it concerns. Times are read in the organization's time zone (the view activates it)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from billing.models.prices import OrganizationDiscount, OrganizationPrice
from billing.pricing.money import MAX_PRICE_PER_MTOK
from llmcost_project.api_errors import MomentField, QueryForm

MAX_PAGE = 10_000


def _rate(label: str, *, required: bool = True, help_text: str = "") -> forms.DecimalField:
    return forms.DecimalField(
        label=label, required=required, max_digits=20, decimal_places=10, min_value=0,
        max_value=MAX_PRICE_PER_MTOK, help_text=help_text,
        widget=forms.NumberInput(attrs={"step": "any", "min": "0", "inputmode": "decimal"}),
    )  # fmt: skip


def _moment(label: str, help_text: str) -> MomentField:
    return MomentField(
        label=label, required=False, help_text=help_text,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
    )  # fmt: skip


class PriceSearchForm(QueryForm):
    q = forms.CharField(required=False, max_length=200, label="Search provider or model")
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_PAGE)


class PriceListEntryForm(forms.Form):
    """Shared fields; `values()` is what the services take."""

    effective_from = _moment("From", "Empty: now.")
    effective_until = _moment("Until", "Empty: until changed or ended.")
    note = forms.CharField(required=False, max_length=200, help_text="e.g. the contract it comes from.")

    def values(self) -> dict[str, Any]:
        return dict(self.cleaned_data)

    def refuse(self, error: ValidationError) -> None:
        """Put a service's refusal next to the fields it names."""
        if not hasattr(error, "error_dict"):
            self.add_error(None, error)
            return
        for name, messages in error.message_dict.items():
            self.add_error(name if name in self.fields else None, messages)


class OverrideForm(PriceListEntryForm):
    provider = forms.CharField(max_length=64, help_text="As the platform's price names it, e.g. openai.")
    model = forms.CharField(max_length=200, help_text="As the platform's price names it, e.g. gpt-4o.")
    input_per_mtok = _rate("Input $/1M")
    output_per_mtok = _rate("Output $/1M")
    cache_read_per_mtok = _rate("Cache read $/1M", required=False, help_text="Empty: the input price.")
    cache_write_per_mtok = _rate("Cache write $/1M", required=False, help_text="Empty: the input price.")
    extra_prices = forms.CharField(
        label="Other dimensions (JSON)",
        required=False,
        max_length=20_000,
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false"}),
        help_text='genai-prices keys, e.g. {"cache_write_1h_mtok": "6", '
        '"input_mtok": {"base": "3", "tiers": [{"start": 200000, "price": "6"}]}}.',
    )

    field_order = ["provider", "model", "input_per_mtok", "output_per_mtok", "cache_read_per_mtok",
                   "cache_write_per_mtok", "extra_prices", "effective_from", "effective_until", "note"]  # fmt: skip

    @classmethod
    def initial_of(cls, override: OrganizationPrice) -> dict[str, Any]:
        initial = {name: getattr(override, name) for name in cls.base_fields}
        initial["extra_prices"] = json.dumps(override.extra_prices) if override.extra_prices else ""
        return initial

    def clean_extra_prices(self) -> dict:
        raw = self.cleaned_data["extra_prices"].strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise ValidationError("Not valid JSON.") from None
        if not isinstance(value, dict):
            raise ValidationError("Give a JSON object of price keys.")
        return value


class DiscountForm(PriceListEntryForm):
    percent = forms.DecimalField(
        label="Percent off", max_digits=7, decimal_places=4, min_value=-1000, max_value=100,
        help_text="10 = 10 % off the platform's prices; -5 = a 5 % markup.",
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"}),
    )  # fmt: skip
    provider = forms.CharField(required=False, max_length=64, help_text="Empty: every provider.")
    model = forms.CharField(required=False, max_length=200, help_text="Empty: every model (of the provider).")

    field_order = ["percent", "provider", "model", "effective_from", "effective_until", "note"]

    @classmethod
    def initial_of(cls, discount: OrganizationDiscount) -> dict[str, Any]:
        return {name: getattr(discount, name) for name in cls.base_fields}


class EndForm(PriceListEntryForm):
    """When an entry stops applying."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["effective_from"], self.fields["note"]
        self.fields["effective_until"].label = "End at"
        self.fields["effective_until"].help_text = "Empty: now. The platform's price applies from then."
