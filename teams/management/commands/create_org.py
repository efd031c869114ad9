from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from teams.models import Organization
from teams.services import organization_create


class Command(BaseCommand):
    help = "Create an organization (a tenant) with its default team."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")

    def handle(self, *args, slug, name, **options):
        if Organization.objects.filter(slug=slug).exists():
            raise CommandError(f"Organization {slug!r} already exists.")
        try:
            organization = organization_create(slug=slug, name=name)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Created organization {organization.slug} ({organization.name})")
