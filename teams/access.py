"""The one place that decides what a user or an API token may see and write.

Every API view, page, selector and export asks this module for an `AccessScope` and filters
through it; nothing else filters by organization on its own. Outsiders get `Http404` (not 403)
for another organization's objects, so "not yours" cannot be told from "does not exist".
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
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

    @property
    def sees_whole_organization(self) -> bool:
        """Organization-wide figures (an organization budget's spend) sum every team's usage:
        only a principal who sees every team may read them."""
        return self.team_ids is None

    @property
    def manages_whole_organization(self) -> bool:
        """Organization-wide settings (its price list) change every team's figures: only an owner or
        admin who sees every team changes them."""
        return self.can_manage and self.team_ids is None

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

    def find_team(self, alias: str) -> Team | None:
        """A visible team by alias, or None; through the prepared query, for the per-call APIs."""
        found = _query("teams", _TeamsQuery)(self.organization, [alias], False)
        if not found or (self.team_ids is not None and found[0].pk not in self.team_ids):
            return None
        return found[0]


# --- API tokens ---------------------------------------------------------------------------------


class _Loader:
    """Model instances from a hand-written SELECT: one model's columns under a table alias.

    The API authenticates every request and resolves teams for every event; building those
    queries with the ORM each time costs several times the query itself. The SELECT list and the
    conversions are Django's own (each field's database converters), computed once per process.
    """

    def __init__(self, model, alias: str):
        quote = connection.ops.quote_name
        fields = model._meta.concrete_fields
        self.model = model
        self.attnames = [field.attname for field in fields]
        self.columns = ", ".join(f"{alias}.{quote(field.column)}" for field in fields)
        self.width = len(fields)
        self.converters = []
        for index, field in enumerate(fields):
            column = field.get_col(alias)
            converters = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
            if converters:
                self.converters.append((index, converters, column))

    def instance(self, values):
        values = list(values)
        for index, converters, column in self.converters:
            for convert in converters:
                values[index] = convert(values[index], column, connection)
        return self.model.from_db(connection.alias, self.attnames, values)


class _TokenQuery:
    """The token of a lookup, with its organization and team, in one indexed query."""

    def __init__(self):
        quote = connection.ops.quote_name
        self.token = _Loader(ApiToken, "t")
        self.organization = _Loader(Organization, "o")
        self.team = _Loader(Team, "tm")
        # Names come from the models, never from input.
        self.sql = (
            f"SELECT {self.token.columns}, {self.organization.columns}, {self.team.columns} "  # noqa: S608
            f"FROM {quote(ApiToken._meta.db_table)} t "
            f"JOIN {quote(Organization._meta.db_table)} o ON o.id = t.organization_id "
            f"LEFT JOIN {quote(Team._meta.db_table)} tm ON tm.id = t.team_id "
            "WHERE t.lookup = %s AND t.revoked_at IS NULL"
        )

    def __call__(self, lookup: str) -> ApiToken | None:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, [lookup])
            row = cursor.fetchone()
        if row is None:
            return None
        first_team_column = self.token.width + self.organization.width
        token = self.token.instance(row[: self.token.width])
        organization = self.organization.instance(row[self.token.width : first_team_column])
        ApiToken.organization.field.set_cached_value(token, organization)
        if token.team_id is not None:
            team = self.team.instance(row[first_team_column:])
            Team.organization.field.set_cached_value(team, organization)
            ApiToken.team.field.set_cached_value(token, team)
        return token


_queries: dict[str, object] = {}


def _query(name: str, build):
    """One prepared query object per process and database backend."""
    key = f"{name}:{connection.vendor}"
    query = _queries.get(key)
    if query is None:
        query = _queries[key] = build()
    return query


def authenticate_token(raw: str) -> ApiToken | None:
    """Return the active token for a presented secret, or None.

    One indexed query on every request, nothing remembered between requests: a revoked token is
    refused by every process from the moment the revocation commits.
    """
    if not raw.startswith(ApiToken.PREFIX) or len(raw) > 200:
        return None
    lookup = raw[len(ApiToken.PREFIX) :].split("_", 1)[0]
    token = _query("token", _TokenQuery)(lookup)
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


class _TeamsQuery:
    """An organization's teams with the given aliases, and its default team, in one query."""

    def __init__(self):
        self.team = _Loader(Team, "tm")
        table = connection.ops.quote_name(Team._meta.db_table)
        self.sql = f"SELECT {self.team.columns} FROM {table} tm WHERE tm.organization_id = %s AND "  # noqa: S608

    def __call__(self, organization: Organization, aliases: list[str], with_default: bool) -> list[Team]:
        conditions = []
        if aliases:
            conditions.append("tm.alias IN (" + ", ".join(["%s"] * len(aliases)) + ")")
        if with_default:
            conditions.append("tm.is_default")
        if not conditions:
            return []
        with connection.cursor() as cursor:
            cursor.execute(self.sql + "(" + " OR ".join(conditions) + ")", [organization.pk, *aliases])
            teams = [self.team.instance(row) for row in cursor.fetchall()]
        for team in teams:
            Team.organization.field.set_cached_value(team, organization)
        return teams


class TeamResolver:
    """Finds (or creates) the team each ingested event belongs to, for one request.

    A pinned token's team wins; else the event's `team_alias` within the token's organization;
    else the organization's default team. Results are remembered, so a batch of 1,000 events
    naming three teams costs at most a few queries, not one per event.
    """

    DEFAULT = "\x00default"  # never an alias (aliases start with a letter or digit)

    def __init__(self, token: ApiToken):
        self.token = token
        self.organization = token.organization
        self._by_alias: dict[str, Team] = {}

    def preload(self, aliases: set[str], *, default: bool = False) -> None:
        """Fetch the named teams (and the default team, when some event names none) in one query."""
        if self.token.team_id is not None:
            return
        wanted = sorted(alias for alias in aliases if alias and alias not in self._by_alias)
        default = default and self.DEFAULT not in self._by_alias
        for team in _query("teams", _TeamsQuery)(self.organization, wanted, default):
            if team.alias in aliases:
                self._by_alias[team.alias] = team
            if team.is_default:
                self._by_alias[self.DEFAULT] = team

    def resolve(self, alias: str | None) -> Team:
        if self.token.team is not None:
            return self.token.team
        if not alias:
            return self._default_team()
        team = self._by_alias.get(alias)
        if team is None:
            team = self._find_or_create(alias)
            self._by_alias[alias] = team
        return team

    def _default_team(self) -> Team:
        if self.DEFAULT not in self._by_alias:
            self._by_alias[self.DEFAULT] = default_team(self.organization)
        return self._by_alias[self.DEFAULT]

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
