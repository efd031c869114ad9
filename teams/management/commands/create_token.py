from django.core.management.base import BaseCommand, CommandError

from teams.models import Organization, Team
from teams.services import token_create

SCOPES = {"ingest", "read"}


class Command(BaseCommand):
    help = "Create an API token. The token is printed alone on the last line, and never again."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("--team", default=None, help="Pin the token to this team alias.")
        parser.add_argument("--scopes", default="ingest", help="Comma-separated: ingest,read")
        parser.add_argument("--name", default="")

    def handle(self, *args, org_slug, team, scopes, name, **options):
        organization = Organization.objects.filter(slug=org_slug).first()
        if organization is None:
            raise CommandError(f"No organization {org_slug!r}.")
        wanted = {scope.strip() for scope in scopes.split(",") if scope.strip()}
        if not wanted or wanted - SCOPES:
            raise CommandError(f"--scopes must name ingest and/or read, got {scopes!r}.")
        pinned = None
        if team:
            pinned = Team.objects.filter(organization=organization, alias=team).first()
            if pinned is None:
                raise CommandError(f"No team {team!r} in {org_slug}.")
        token, raw = token_create(
            organization=organization,
            team=pinned,
            can_ingest="ingest" in wanted,
            can_read="read" in wanted,
            name=name,
        )
        where = f"team {pinned.alias}" if pinned else "all teams"
        scopes_text = ",".join(token.scopes)
        self.stdout.write(f"Created token {token.display_prefix} for {org_slug} ({where}; scopes: {scopes_text})")
        self.stdout.write(raw)
