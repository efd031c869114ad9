"""Glue between pages and `teams.access`: every organization page is wrapped by `org_page`."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect

from .access import AccessScope, organizations_for_user, scope_for_user


def org_page(view=None, *, manage: bool = False):
    """Resolve `org_slug` to the user's AccessScope (404 for outsiders) and pass it as `scope`.

    With `manage=True` only owners and admins (and platform staff) get in; members and viewers of
    the organization get 403 (they know it exists; they may not change it).
    """

    def decorate(view):
        @login_required
        @wraps(view)
        def wrapper(request, org_slug, *args, **kwargs):
            scope: AccessScope = scope_for_user(request.user, org_slug)
            if manage and not scope.can_manage:
                raise PermissionDenied("Only owners and admins manage this.")
            request.scope = scope
            return view(request, scope, *args, **kwargs)

        return wrapper

    return decorate(view) if view is not None else decorate


@login_required
def home(request):
    """Send the user to their first organization's dashboard."""
    organization = organizations_for_user(request.user).order_by("name").first()
    if organization is None:
        from django.shortcuts import render

        return render(request, "teams/no_organization.html")
    return redirect("dashboard", org_slug=organization.slug)
