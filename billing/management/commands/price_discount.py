from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand

from billing.pricing.price_lists import discount_create

from ._price_lists import moment, number, organization, refused, window


class Command(BaseCommand):
    help = (
        "Give an organization a discount in percent off the platform's prices (negative: a markup), for every "
        "model, a provider's models (--provider) or one model (--model), from --from (default now) until "
        "--until (default: open-ended). Its events in that window are repriced in the background."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("percent", help="10 = 10 %% off; -5 = a 5 %% markup (between -1000 and 100).")
        parser.add_argument("--provider", default="", help="Only this provider's models (default: every provider).")
        parser.add_argument("--model", default="", help="Only this model (default: every model).")
        parser.add_argument("--from", dest="start", default=None, help="ISO 8601; UTC without an offset. Default now.")
        parser.add_argument("--until", dest="end", default=None, help="ISO 8601; UTC without an offset.")
        parser.add_argument("--note", default="", help="e.g. the contract it comes from.")

    def handle(self, *args, org_slug, percent, provider, model, start, end, note, **options):
        org = organization(org_slug)
        try:
            discount = discount_create(
                organization=org, percent=number(percent, "PERCENT"), provider=provider, model=model,
                effective_from=moment(start, "--from"), effective_until=moment(end, "--until"), note=note,
            )  # fmt: skip
        except ValidationError as error:
            raise refused(error) from None
        scope = "/".join(part for part in (discount.provider, discount.model) if part) or "every model"
        amount = discount.percent.normalize()
        what = f"{amount:f}% off" if amount >= 0 else f"a {-amount:f}% markup on"
        self.stdout.write(
            f"Created discount {discount.pk} for {org.slug}: {what} {scope}, "
            f"{window(discount.effective_from, discount.effective_until)}. "
            f"{org.slug}'s events in that window are repriced in the background."
        )
