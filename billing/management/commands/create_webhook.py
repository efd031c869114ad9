from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from billing.models import EVENT_TYPES, NotificationChannel
from billing.notifications import channel_create
from teams.models import Organization, Team


class Command(BaseCommand):
    help = (
        "Add a webhook (signed JSON) or Slack channel to an organization. The signing secret is printed "
        "alone on the last line and never shown again."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("url", help="The http(s) URL to post to.")
        parser.add_argument("--kind", choices=["generic", "slack"], default="generic")
        parser.add_argument(
            "--team",
            nargs="+",
            action="extend",
            default=[],
            metavar="ALIAS",
            help="Only events of these teams (default: every team and organization budgets).",
        )
        parser.add_argument(
            "--events", default="", help=f"Comma-separated, of {', '.join(EVENT_TYPES)} (default: all)."
        )
        parser.add_argument("--name", default="")

    def handle(self, *args, org_slug, url, kind, team, events, name, **options):
        organization = Organization.objects.filter(slug=org_slug).first()
        if organization is None:
            raise CommandError(f"No organization {org_slug!r}.")
        teams = []
        for alias in dict.fromkeys(team):
            found = Team.objects.filter(organization=organization, alias=alias).first()
            if found is None:
                raise CommandError(f"No team {alias!r} in {org_slug}.")
            teams.append(found)
        event_types = [part.strip() for part in events.split(",") if part.strip()]
        unknown = [t for t in event_types if t not in EVENT_TYPES]
        if unknown:
            raise CommandError(f"--events: unknown {', '.join(unknown)}; use {', '.join(EVENT_TYPES)}.")
        channel_kind = NotificationChannel.Kind.SLACK if kind == "slack" else NotificationChannel.Kind.WEBHOOK
        try:
            channel, secret = channel_create(
                organization=organization, kind=channel_kind, url=url, teams=teams, event_types=event_types, name=name,
            )  # fmt: skip
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            raise CommandError(problems) from None
        scope = ", ".join(t.alias for t in teams) or "every team"
        self.stdout.write(
            f"Created {channel.get_kind_display()} channel {channel.pk} for {org_slug} ({scope}; "
            f"{', '.join(channel.event_types) or 'every event'})."
        )
        self.stdout.write("Signing secret (shown once):")
        self.stdout.write(secret)
