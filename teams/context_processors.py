from .access import organizations_for_user


def organizations(request) -> dict:
    """The organizations the signed-in user may switch between (for the header switcher)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"switchable_organizations": []}
    return {"switchable_organizations": organizations_for_user(user).order_by("name").only("slug", "name")}
