from django.contrib import admin

from billing.models.prices import ModelPrice

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
