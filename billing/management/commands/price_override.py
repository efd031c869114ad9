from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand

from billing.pricing.price_lists import override_create

from ._price_lists import moment, number, organization, refused, window


class Command(BaseCommand):
    help = (
        "Give an organization its own price for a model (USD per million tokens), replacing the platform's "
        "for its events from --from (default now) until --until (default: open-ended). Its events in that "
        "window are repriced in the background."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("--provider", required=True, help="Provider id, as the platform's price names it.")
        parser.add_argument("--model", required=True, help="Model name, as the platform's price names it.")
        parser.add_argument("--input", required=True, help="USD per million input tokens.")
        parser.add_argument("--output", required=True, help="USD per million output tokens.")
        parser.add_argument("--cache-read", default=None, help="USD per million cached input tokens (default: input).")
        parser.add_argument("--cache-write", default=None, help="USD per million cache-write tokens (default: input).")
        parser.add_argument("--from", dest="start", default=None, help="ISO 8601; UTC without an offset. Default now.")
        parser.add_argument("--until", dest="end", default=None, help="ISO 8601; UTC without an offset.")
        parser.add_argument("--note", default="", help="e.g. the contract it comes from.")

    def handle(self, *args, org_slug, provider, model, input, output, cache_read, cache_write, start, end, note,
               **options):  # fmt: skip
        org = organization(org_slug)
        try:
            override = override_create(
                organization=org, provider=provider, model=model, input_per_mtok=number(input, "--input"),
                output_per_mtok=number(output, "--output"), cache_read_per_mtok=number(cache_read, "--cache-read"),
                cache_write_per_mtok=number(cache_write, "--cache-write"), effective_from=moment(start, "--from"),
                effective_until=moment(end, "--until"), note=note,
            )  # fmt: skip
        except ValidationError as error:
            raise refused(error) from None
        named = (
            ("input", override.input_per_mtok),
            ("output", override.output_per_mtok),
            ("cache read", override.cache_read_per_mtok),
            ("cache write", override.cache_write_per_mtok),
        )
        rates = ", ".join(f"{label} ${rate.normalize():f}/1M" for label, rate in named if rate is not None)
        self.stdout.write(
            f"Created override {override.pk} for {org.slug}: {override.provider}/{override.model} {rates}, "
            f"{window(override.effective_from, override.effective_until)}. "
            f"{org.slug}'s events in that window are repriced in the background."
        )
