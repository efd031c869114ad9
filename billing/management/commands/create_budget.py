from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from billing.models import Budget
from billing.services import budget_create
from teams.models import ApiToken, Organization, Team


class Command(BaseCommand):
    help = "Create a budget for an organization, a team, a user within a team, an end user or an API token."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("--team", default=None, help="Team alias (omit for the whole organization).")
        parser.add_argument("--user", default="", help="User id within the team.")
        parser.add_argument("--amount", required=True, help="Limit in USD per period.")
        parser.add_argument("--period", required=True, choices=Budget.Period.values)
        parser.add_argument("--thresholds", default="50,80,100", help="Alert percentages, comma-separated.")
        parser.add_argument("--hard", action="store_true", help="Refuse budget checks once the limit is reached.")
        parser.add_argument("--email", action="append", default=[], help="Extra alert recipient (repeatable).")
        parser.add_argument("--name", default="")
        parser.add_argument("--end-user", default="", help="End user id (a customer of the organization's product).")
        parser.add_argument("--token", default="", help="API token prefix (lc_xxxxxxxx): limit what it reserves.")
        parser.add_argument(
            "--on-error", default=Budget.OnError.ALLOW, choices=Budget.OnError.values,
            help="Reservation answer when the store cannot be reached (default: allow).",
        )

    def handle(
        self, *args, org_slug, team, user, amount, period, thresholds, hard, email, name, end_user, token, on_error,
        **options,
    ):
        organization = Organization.objects.filter(slug=org_slug).first()
        if organization is None:
            raise CommandError(f"No organization {org_slug!r}.")
        pinned = None
        if team:
            pinned = Team.objects.filter(organization=organization, alias=team).first()
            if pinned is None:
                raise CommandError(f"No team {team!r} in {org_slug}.")
        api_token = None
        if token:
            lookup = token.removeprefix(ApiToken.PREFIX).split("_", 1)[0]
            api_token = ApiToken.objects.filter(organization=organization, lookup=lookup).first()
            if api_token is None:
                raise CommandError(f"No token {token!r} in {org_slug}.")
        try:
            amount_usd = Decimal(amount)
            percentages = [int(part) for part in thresholds.split(",") if part.strip()]
        except (InvalidOperation, ValueError):
            raise CommandError("--amount must be a number and --thresholds percentages like 50,80,100.") from None
        for address in email:
            try:
                validate_email(address)
            except ValidationError:
                raise CommandError(f"--email {address!r} is not an email address.") from None
        try:
            budget = budget_create(
                organization=organization, team=pinned, user_id=user, amount_usd=amount_usd, period=period,
                thresholds=percentages, is_hard=hard, extra_emails=email, name=name,
                end_user=end_user, token=api_token, on_error=on_error,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Created budget {budget.pk}: {budget}")
