import hashlib
import re
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

alias_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}$",
    "Use letters, digits, '.', '_', '-', '@' or ':' (at most 100 characters).",
)

# A metadata key, as events carry it and reports group by it (`metadata.<key>`): the one definition,
# here at the bottom layer so declared dimensions (teams) and the reports (metrics) share it.
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
metadata_key_validator = RegexValidator(
    rf"\A{METADATA_KEY.pattern}\Z",
    "%(value)r is not a metadata key: use 1 to 64 letters, digits, '_', '.' or '-'.",
)


class Organization(models.Model):
    """The tenant: every event, team, token and budget belongs to exactly one organization."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    time_zone = models.CharField(max_length=64, default="UTC", help_text="Budget periods follow this zone.")
    auto_create_teams = models.BooleanField(
        default=True, help_text="Create a team when an event names an unknown team_alias."
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name or self.slug


class Team(models.Model):
    DEFAULT_ALIAS = "default"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="teams")
    alias = models.CharField(max_length=100, validators=[alias_validator])
    name = models.CharField(max_length=200, blank=True)
    is_default = models.BooleanField(default=False, help_text="Receives events that name no team.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "alias"], name="team_alias_unique_in_org"),
            models.UniqueConstraint(
                fields=["organization"], condition=models.Q(is_default=True), name="one_default_team_per_org"
            ),
        ]
        ordering = ["alias"]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.alias}"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    teams = models.ManyToManyField(
        Team, blank=True, related_name="limited_members", help_text="Leave empty to see every team."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="one_membership_per_org")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization.slug} ({self.role})"

    @property
    def can_manage(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)


class ApiToken(models.Model):
    """A machine credential. The secret is shown once; only a lookup part and a digest are kept.

    Token format: ``lc_<lookup 8>_<secret 32>``. The lookup finds the row with an index, the
    SHA-256 digest of the whole token is compared in constant time.
    """

    PREFIX = "lc_"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_tokens")
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens",
        help_text="A pinned token records and reads this team only.",
    )
    name = models.CharField(max_length=200, blank=True)
    lookup = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    can_ingest = models.BooleanField(default=True)
    can_read = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.PREFIX}{self.lookup}… ({self.organization.slug})"

    @property
    def display_prefix(self) -> str:
        return f"{self.PREFIX}{self.lookup}"

    @property
    def scopes(self) -> list[str]:
        return [name for name, on in (("ingest", self.can_ingest), ("read", self.can_read)) if on]

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @staticmethod
    def hash_secret(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def new_secret(cls) -> tuple[str, str]:
        """Return (lookup, full token)."""
        lookup = secrets.token_hex(4)
        return lookup, f"{cls.PREFIX}{lookup}_{secrets.token_urlsafe(24)}"


class DeclaredDimension(models.Model):
    """A metadata key an organization groups its spend by (`metadata.<key>` in reports).

    At most `LIMIT` per organization (enforced by `teams.services.dimension_declare`, which counts under
    a lock on the organization row); the daily rollups of declared keys read this table.
    """

    LIMIT = 10

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="declared_dimensions")
    key = models.CharField(max_length=64, validators=[metadata_key_validator])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "key"], name="declared_dimension_unique_in_org",
                violation_error_message="This key is already declared in the organization.",
            ),
        ]
        ordering = ["key"]

    def __str__(self) -> str:
        return f"{self.organization.slug}: metadata.{self.key}"

    def clean(self) -> None:
        if self._state.adding and self.organization_id is not None:
            self.check_room()

    def check_room(self) -> None:
        """Refuse a new key when the organization already declares `LIMIT` (a key it already declares
        is left to the unique constraint, which names it as such)."""
        declared = DeclaredDimension.objects.filter(organization_id=self.organization_id)
        if declared.count() >= self.LIMIT and not declared.filter(key=self.key).exists():
            raise ValidationError(
                f"Cannot declare {self.key!r}: the organization already declares {self.LIMIT} dimensions, "
                "the most allowed; remove one first.",
                code="limit",
            )
