from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from teams.models import Organization, Team
from teams.services import team_create


class Command(BaseCommand):
    help = "Create a team inside an organization."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("alias")
        parser.add_argument("--name", default="")

    def handle(self, *args, org_slug, alias, name, **options):
        organization = Organization.objects.filter(slug=org_slug).first()
        if organization is None:
            raise CommandError(f"No organization {org_slug!r}.")
        if Team.objects.filter(organization=organization, alias=alias).exists():
            raise CommandError(f"Team {alias!r} already exists in {org_slug}.")
        try:
            team = team_create(organization=organization, alias=alias, name=name)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Created team {team}")
