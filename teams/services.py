"""Writes for tenancy: organizations, teams, members, tokens and declared dimensions."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from .access import default_team
from .models import ApiToken, DeclaredDimension, Membership, Organization, Role, Team


@transaction.atomic
def organization_create(*, slug: str, name: str = "") -> Organization:
    organization = Organization(slug=slug, name=name or slug)
    organization.full_clean()  # the slug names the tenant in URLs
    organization.save()
    default_team(organization)
    return organization


def team_create(*, organization: Organization, alias: str, name: str = "") -> Team:
    team = Team(organization=organization, alias=alias, name=name or alias)
    team.full_clean()
    team.save()
    return team


def token_create(
    *,
    organization: Organization,
    team: Team | None = None,
    can_ingest: bool = True,
    can_read: bool = False,
    name: str = "",
    created_by=None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is never stored or shown again."""
    if team is not None and team.organization_id != organization.pk:
        raise ValueError("The team belongs to another organization.")
    lookup, raw = ApiToken.new_secret()
    token = ApiToken.objects.create(
        organization=organization,
        team=team,
        name=name,
        lookup=lookup,
        digest=ApiToken.hash_secret(raw),
        can_ingest=can_ingest,
        can_read=can_read,
        created_by=created_by,
    )
    return token, raw


def token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


@transaction.atomic
def member_add(
    *,
    organization: Organization,
    email: str,
    role: str,
    teams: list[Team] | None = None,
    password: str | None = None,
) -> Membership:
    """Add (or update) a member, creating the user when there is none with this email."""
    if role not in Role.values:
        raise ValueError(f"Unknown role {role!r}; choose one of {', '.join(Role.values)}.")
    user_model = get_user_model()
    user = user_model.objects.filter(email__iexact=email).first()
    if user is None:
        user = user_model.objects.create_user(username=email, email=email, password=password)
    elif password:
        user.set_password(password)
        user.save(update_fields=["password"])
    membership, _ = Membership.objects.update_or_create(
        user=user, organization=organization, defaults={"role": role}
    )
    membership.teams.set(teams or [])
    return membership


# --- declared dimensions ----------------------------------------------------------------------------


def dimension_declare(*, organization: Organization, key: str) -> DeclaredDimension:
    """Declare a metadata key the organization groups its spend by.

    Raises ValidationError (naming the key) for a malformed key, a key already declared, or an
    organization at its limit of `DeclaredDimension.LIMIT`. The limit is checked again under a lock
    on the organization's row, so two concurrent declarations cannot pass it together; a duplicate is
    refused by the unique constraint, not by looking first.
    """
    dimension = DeclaredDimension(organization=organization, key=key)
    dimension.full_clean(validate_unique=False, validate_constraints=False)  # the key's rule, the limit
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
        dimension.check_room()
        try:
            with transaction.atomic():
                dimension.save()
        except IntegrityError:
            raise ValidationError(f"{key!r} is already declared in {organization.slug}.", code="exists") from None
    return dimension


def dimension_remove(*, organization: Organization, key: str) -> bool:
    """Stop grouping by a key. False when it was not declared."""
    deleted, _ = DeclaredDimension.objects.filter(organization=organization, key=key).delete()
    return deleted > 0
