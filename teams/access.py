"""The one place that decides what a user or an API token may see and write.

Every API view, page, selector and export asks this module for an `AccessScope` and filters
through it; nothing else filters by organization on its own. Outsiders get `Http404` (not 403)
for another organization's objects, so "not yours" cannot be told from "does not exist".
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from .models import ApiToken, Membership, Organization, Role, Team

# last_used_at is written at most this often per token, so a busy gateway does not turn every
# request into a row update.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class UnknownTeam(Exception):
    """An event named a team that does not exist and the organization does not auto-create."""


@dataclass(frozen=True)
class AccessScope:
    """What one principal (a token or a user in one organization) may see.

    `team_ids` is None when every team of the organization is visible.
    """

    organization: Organization
    team_ids: frozenset[int] | None = None
    can_manage: bool = False
    role: str | None = None

    def filter(self, queryset: QuerySet, *, team_field: str = "team") -> QuerySet:
        """Restrict any queryset with `organization` and `team` foreign keys to this scope."""
        queryset = queryset.filter(organization=self.organization)
        if self.team_ids is not None:
            queryset = queryset.filter(**{f"{team_field}_id__in": self.team_ids})
        return queryset

    def teams(self) -> QuerySet[Team]:
        teams = Team.objects.filter(organization=self.organization)
        if self.team_ids is not None:
            teams = teams.filter(id__in=self.team_ids)
        return teams

    def team(self, alias: str) -> Team:
        """A visible team by alias, or 404 (an outsider cannot probe for aliases)."""
        try:
            return self.teams().get(alias=alias)
        except Team.DoesNotExist:
            raise Http404("No such team.") from None


# --- API tokens ---------------------------------------------------------------------------------


def authenticate_token(raw: str) -> ApiToken | None:
    """Return the active token for a presented secret, or None. One indexed query."""
    if not raw.startswith(ApiToken.PREFIX) or len(raw) > 200:
        return None
    lookup = raw[len(ApiToken.PREFIX) :].split("_", 1)[0]
    token = (
        ApiToken.objects.select_related("organization", "team")
        .filter(lookup=lookup, revoked_at__isnull=True)
        .first()
    )
    if token is None or not hmac.compare_digest(token.digest, ApiToken.hash_secret(raw)):
        return None
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        # Conditional update: concurrent requests race harmlessly, and a recent stamp is not rewritten.
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
        token.last_used_at = now
    return token


def scope_for_token(token: ApiToken) -> AccessScope:
    return AccessScope(
        organization=token.organization,
        team_ids=None if token.team_id is None else frozenset([token.team_id]),
    )


class TeamResolver:
    """Finds (or creates) the team each ingested event belongs to, for one request.

    A pinned token's team wins; else the event's `team_alias` within the token's organization;
    else the organization's default team. Results are remembered, so a batch of 1,000 events
    naming three teams costs at most a few queries, not one per event.
    """

    def __init__(self, token: ApiToken):
        self.token = token
        self.organization = token.organization
        self._by_alias: dict[str, Team] = {}

    def preload(self, aliases: set[str]) -> None:
        wanted = {alias for alias in aliases if alias and alias not in self._by_alias}
        if self.token.team_id is not None or not wanted:
            return
        for team in Team.objects.filter(organization=self.organization, alias__in=wanted):
            self._by_alias[team.alias] = team

    def resolve(self, alias: str | None) -> Team:
        if self.token.team_id is not None:
            return self.token.team
        if not alias:
            return self._default_team()
        team = self._by_alias.get(alias)
        if team is None:
            team = self._find_or_create(alias)
            self._by_alias[alias] = team
        return team

    def _default_team(self) -> Team:
        key = "\x00default"
        if key not in self._by_alias:
            self._by_alias[key] = default_team(self.organization)
        return self._by_alias[key]

    def _find_or_create(self, alias: str) -> Team:
        team = Team.objects.filter(organization=self.organization, alias=alias).first()
        if team is not None:
            return team
        if not self.organization.auto_create_teams:
            raise UnknownTeam(alias)
        try:
            with transaction.atomic():
                return Team.objects.create(organization=self.organization, alias=alias, name=alias)
        except IntegrityError:  # created concurrently by another request
            return Team.objects.get(organization=self.organization, alias=alias)


def default_team(organization: Organization) -> Team:
    team = Team.objects.filter(organization=organization, is_default=True).first()
    if team is not None:
        return team
    try:
        with transaction.atomic():
            team, _ = Team.objects.get_or_create(
                organization=organization, alias=Team.DEFAULT_ALIAS, defaults={"name": "Default"}
            )
            if not team.is_default:
                Team.objects.filter(pk=team.pk).update(is_default=True)
                team.is_default = True
            return team
    except IntegrityError:
        return Team.objects.get(organization=organization, is_default=True)


# --- people -------------------------------------------------------------------------------------


def organizations_for_user(user) -> QuerySet[Organization]:
    if not getattr(user, "is_authenticated", False):
        return Organization.objects.none()
    if user.is_staff:
        return Organization.objects.all()
    return Organization.objects.filter(memberships__user=user)


def scope_for_user(user, organization_slug: str) -> AccessScope:
    """The user's view of one organization, or 404 when they are not in it."""
    if not getattr(user, "is_authenticated", False):
        raise Http404("No such organization.")
    membership = (
        Membership.objects.select_related("organization")
        .prefetch_related("teams")
        .filter(user=user, organization__slug=organization_slug)
        .first()
    )
    if membership is None:
        if user.is_staff:
            organization = Organization.objects.filter(slug=organization_slug).first()
            if organization is not None:
                return AccessScope(organization=organization, can_manage=True, role=Role.OWNER)
        raise Http404("No such organization.")
    team_ids = frozenset(team.id for team in membership.teams.all()) or None
    return AccessScope(
        organization=membership.organization,
        team_ids=team_ids,
        can_manage=membership.can_manage,
        role=membership.role,
    )
