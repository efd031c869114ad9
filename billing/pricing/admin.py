from django import forms
from django.contrib import admin

from billing.models.prices import ModelPrice, OrganizationDiscount, OrganizationPrice

from .price_lists import Coverage, price_list_entry_deleted, price_list_entry_saved
from .services import reprice_after_change


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = (
        "model", "provider", "input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "effective_from", "daily_from",
        "source", "admin_edited",
    )
    list_filter = ("provider", "source", "admin_edited")
    search_fields = ("model", "provider")
    date_hierarchy = "effective_from"
    readonly_fields = ("source", "admin_edited", "catalog_rank", "created_at", "updated_at")

    def save_model(self, request, obj, form, change):
        if change:
            obj.admin_edited = True  # sync_prices must not overwrite what an admin decided
        else:
            obj.source = ModelPrice.Source.ADMIN
        super().save_model(request, obj, form, change)
        reprice_after_change(
            provider=obj.provider, model=obj.model, effective_from=obj.effective_from, daily=obj.daily_from is not None
        )
        moved_from = form.initial.get("effective_from") if change and form is not None else None
        if moved_from and moved_from != obj.effective_from:  # the window it used to govern changes too
            reprice_after_change(provider=obj.provider, model=obj.model, effective_from=moved_from)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        reprice_after_change(
            provider=obj.provider, model=obj.model, effective_from=obj.effective_from, daily=obj.daily_from is not None
        )

    def delete_queryset(self, request, queryset):
        deleted = list(queryset.values_list("provider", "model", "effective_from", "daily_from"))
        super().delete_queryset(request, queryset)
        for provider, model, effective_from, daily_from in deleted:
            reprice_after_change(
                provider=provider, model=model, effective_from=effective_from, daily=daily_from is not None
            )


class PriceListEntryForm(forms.ModelForm):
    def clean_provider(self) -> str:
        return self.cleaned_data["provider"].strip().lower()  # provider ids are lowercase, as prices'

    def clean_model(self) -> str:
        return self.cleaned_data["model"].strip()


class PriceListEntryAdmin(admin.ModelAdmin):
    """Saving or deleting an entry reprices that organization's events in the window it covers."""

    form = PriceListEntryForm
    list_select_related = ("organization",)
    search_fields = ("organization__slug", "organization__name", "provider", "model", "note")
    date_hierarchy = "effective_from"
    readonly_fields = ("created_at", "updated_at")
    autocomplete_fields = ("organization",)

    def save_model(self, request, obj, form, change):
        before = Coverage.of(type(obj).objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)
        price_list_entry_saved(entry=obj, before=before)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        price_list_entry_deleted(entry=obj)

    def delete_queryset(self, request, queryset):
        deleted = list(queryset)
        super().delete_queryset(request, queryset)
        for entry in deleted:
            price_list_entry_deleted(entry=entry)


@admin.register(OrganizationPrice)
class OrganizationPriceAdmin(PriceListEntryAdmin):
    list_display = (
        "organization", "provider", "model", "input_per_mtok", "output_per_mtok", "cache_read_per_mtok",
        "cache_write_per_mtok", "effective_from", "effective_until",
    )


@admin.register(OrganizationDiscount)
class OrganizationDiscountAdmin(PriceListEntryAdmin):
    list_display = ("organization", "percent", "provider", "model", "effective_from", "effective_until")
