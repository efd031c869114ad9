from django.contrib import admin

from .models import ModelPrice
from .pricing import forget_price_book


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = (
        "model", "provider", "input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "effective_from",
        "source", "admin_edited",
    )
    list_filter = ("provider", "source", "admin_edited")
    search_fields = ("model", "provider")
    date_hierarchy = "effective_from"
    readonly_fields = ("source", "admin_edited", "created_at", "updated_at")

    def save_model(self, request, obj, form, change):
        if change:
            obj.admin_edited = True  # sync_prices must not overwrite what an admin decided
        else:
            obj.source = ModelPrice.Source.ADMIN
        super().save_model(request, obj, form, change)
        forget_price_book()
