from django.core.management.base import BaseCommand, CommandError

from teams.models import Organization, Role, Team
from teams.services import member_add


class Command(BaseCommand):
    help = "Add a user to an organization with a role, creating the user when missing."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("email")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--team", action="append", default=[], help="Limit to this team (repeatable).")
        parser.add_argument("--password", default=None)

    def handle(self, *args, org_slug, email, role, team, password, **options):
        organization = Organization.objects.filter(slug=org_slug).first()
        if organization is None:
            raise CommandError(f"No organization {org_slug!r}.")
        teams = list(Team.objects.filter(organization=organization, alias__in=team))
        missing = set(team) - {t.alias for t in teams}
        if missing:
            raise CommandError(f"No team(s) {', '.join(sorted(missing))} in {org_slug}.")
        membership = member_add(organization=organization, email=email, role=role, teams=teams, password=password)
        limited = f", limited to {', '.join(sorted(team))}" if team else ""
        self.stdout.write(f"{membership.user.email} is {membership.role} in {org_slug}{limited}")
