"""Reads for tenancy settings that other layers need."""

from __future__ import annotations

from .models import DeclaredDimension, Organization


def declared_dimension_keys(*, organization: Organization) -> list[str]:
    """The metadata keys an organization declares, sorted: what the API answers and what the daily
    rollups of declared keys (a later step, in metrics) will read."""
    return list(
        DeclaredDimension.objects.filter(organization=organization).order_by("key").values_list("key", flat=True)
    )
