"""First-run setup for `make run`: a demo organization, an admin login and an ingest token.

Runs on every start; creates things only the first time and then repeats what it created, so the
newcomer always sees a working login and curl line. The credentials file lives in var/ (ignored
by git) and is for local demos only.
"""

import secrets
import shlex

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from teams.models import Organization
from teams.services import member_add, organization_create, token_create

DEMO_SLUG = "demo"


class Command(BaseCommand):
    help = "Create a demo organization, admin login and ingest token on first run; print them."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, base_url, **options):
        credentials = settings.VAR_DIR / "demo-credentials.txt"
        if not Organization.objects.filter(slug=DEMO_SLUG).exists():
            organization = organization_create(slug=DEMO_SLUG, name="Demo")
            password = secrets.token_urlsafe(12)
            user_model = get_user_model()
            admin = user_model.objects.filter(username="admin").first()
            if admin is None:
                admin = user_model.objects.create_superuser("admin", "admin@localhost", password)
            else:
                admin.set_password(password)
                admin.save()
            member_add(organization=organization, email="admin@localhost", role="owner")
            _, token = token_create(organization=organization, can_ingest=True, can_read=True, name="demo")
            credentials.parent.mkdir(parents=True, exist_ok=True)
            credentials.write_text(f"admin\n{password}\n{token}\n")
            credentials.chmod(0o600)
        if not credentials.exists():
            self.stdout.write("Demo organization exists; its credentials file is gone (var/demo-credentials.txt).")
            return
        username, password, token = credentials.read_text().split()
        event = '{"model":"gpt-4o","prompt_tokens":100,"output_tokens":50,"latency_ms":820,"team_alias":"demo-team"}'
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  llmcost is starting on {base_url}",
                    f"  Admin login:  {base_url}/admin/   user {username}   password {password}",
                    f"  Dashboard:    {base_url}/o/{DEMO_SLUG}/ (same login)",
                    f"  Ingest token: {token}",
                    "  Send a first event:",
                    f"    curl -s -X POST {base_url}/api/v1/metrics/track \\",
                    f"      -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\",
                    f"      -d {shlex.quote(event)}",
                    f"  API docs: {base_url}/api/docs/",
                    "",
                ]
            )
        )
