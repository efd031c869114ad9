from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from teams.models import DeclaredDimension, Organization
from teams.services import dimension_declare, dimension_remove


class Command(BaseCommand):
    help = (
        f"Declare a metadata key an organization groups its spend by (at most {DeclaredDimension.LIMIT}), "
        "or stop grouping by it with --remove."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("key", help="A metadata key, as events carry it (e.g. feature, customer).")
        parser.add_argument("--remove", action="store_true", help="Remove the declared key instead.")

    def handle(self, *args, org_slug, key, remove, **options):
        organization = Organization.objects.filter(slug=org_slug).first()
        if organization is None:
            raise CommandError(f"No organization {org_slug!r}.")
        if remove:
            if not dimension_remove(organization=organization, key=key):
                raise CommandError(f"{key!r} is not declared in {org_slug}.")
            self.stdout.write(f"Removed dimension {key!r} from {org_slug}")
            return
        try:
            dimension_declare(organization=organization, key=key)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        count = DeclaredDimension.objects.filter(organization=organization).count()
        self.stdout.write(f"Declared dimension {key!r} in {org_slug} ({count} of {DeclaredDimension.LIMIT})")
