from django.core.management.base import BaseCommand

from billing.pricing.catalog import price_catalog_sync


class Command(BaseCommand):
    help = "Load model prices from the catalog bundled with genai-prices (offline, idempotent)."

    def handle(self, *args, **options):
        result = price_catalog_sync()
        self.stdout.write(
            f"Prices: {result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
            f"{result.kept_admin_edits} admin-edited rows kept"
        )
