"""What a browser fetches besides the page itself comes from us: the API docs' Swagger UI and the
favicon are our own static files (collected as the image build collects them, served by WhiteNoise),
never a CDN, so the docs work on a network without internet. And management commands start
without django-axes' start-up banner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.test_browser import WAIT, browser, driver, loaded, wait  # noqa: F401 -- browser fixtures

ROOT = Path(__file__).resolve().parent.parent
ICO_MAGIC = b"\x00\x00\x01\x00"
ICO_TYPES = ("image/x-icon", "image/vnd.microsoft.icon")

pytestmark = [pytest.mark.django_db]


@pytest.fixture(scope="module")
def collected_static(tmp_path_factory) -> Path:
    """`collectstatic` as the Dockerfile runs it (DEBUG off: hashed names, a manifest, compressed
    copies), in a fresh interpreter, into a folder of this module's own."""
    root = tmp_path_factory.mktemp("static")
    environment = {
        **os.environ, "DEBUG": "false", "SECRET_KEY": "collectstatic-only-0123456789abcdefghijklmnop",
        "LLMCOST_VAR_DIR": str(tmp_path_factory.mktemp("var")), "DJANGO_SETTINGS_MODULE": "llmcost_project.settings",
    }
    collect = (
        "import django, sys; django.setup(); from django.conf import settings; "
        "settings.STATIC_ROOT = sys.argv[1]; from django.core.management import call_command; "
        "call_command('collectstatic', interactive=False, verbosity=0)"
    )
    result = subprocess.run([sys.executable, "-c", collect, str(root)], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def production_static(settings, collected_static) -> Client:
    """A client of the app serving static files the production way: WhiteNoise from STATIC_ROOT,
    names from the manifest. (A new client starts its middleware, so WhiteNoise sees this root.)"""
    settings.STATIC_ROOT = collected_static
    return Client()


def fetch(client: Client, url: str):
    response = client.get(url, follow=True)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def linked_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


# --- /api/docs/ ----------------------------------------------------------------------------------


def test_it_serves_the_api_docs_with_no_address_outside_the_server(production_static):
    response = production_static.get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert not re.search(r"(https?:)?//[\w.-]+\.[a-z]{2,}", html), "the docs page names another host"
    urls = linked_urls(html)
    assert urls and all(url.startswith("/static/") for url in urls), urls


def test_it_serves_every_file_the_api_docs_load(production_static):
    urls = linked_urls(production_static.get("/api/docs/").content.decode())
    # Collected names are hashed (swagger-ui-bundle.<hash>.js): match on the part before the first dot.
    by_stem = {Path(url).name.split(".")[0]: url for url in urls}
    wanted = {"swagger-ui": "text/css", "swagger-ui-bundle": "text/javascript",
              "swagger-ui-standalone-preset": "text/javascript", "favicon-32x32": "image/png"}

    assert set(wanted) <= set(by_stem), urls
    for stem, content_type in wanted.items():
        response, body = fetch(production_static, by_stem[stem])
        assert response.status_code == 200, by_stem[stem]
        assert response["Content-Type"].startswith(content_type), (by_stem[stem], response["Content-Type"])
        assert len(body) > 100, by_stem[stem]
    assert production_static.get("/api/schema/").status_code == 200  # what Swagger UI then reads


# --- the favicon ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/accounts/login/", "/accounts/password_reset/"])
def test_every_page_links_an_icon_the_server_has(production_static, page):
    html = production_static.get(page).content.decode()

    icons = re.findall(r'<link rel="icon" href="([^"]+)"', html)
    assert icons, "no <link rel=icon>"
    for url in icons:
        response, body = fetch(production_static, url)
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith(("image/", *ICO_TYPES)), (url, response["Content-Type"])
        assert body


def test_it_answers_favicon_ico_with_the_icon(production_static):
    response, body = fetch(production_static, "/favicon.ico")

    assert response.status_code == 200
    assert response["Content-Type"] in ICO_TYPES
    assert body.startswith(ICO_MAGIC)
    assert body == (ROOT / "static" / "favicon.ico").read_bytes()


# --- in a browser, offline -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_swagger_ui_renders_the_operations_from_the_server_alone(browser, live_server):  # noqa: F811
    browser.get(live_server.url + "/api/docs/")
    wait(browser, lambda d: loaded(d) and d.find_elements("css selector", ".swagger-ui .opblock"), WAIT)

    paths = [element.text for element in browser.find_elements("css selector", ".swagger-ui .opblock-summary-path")]
    assert "/api/v1/events" in paths, paths
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(url.startswith(live_server.url + "/") for url in fetched), fetched


# --- management commands -------------------------------------------------------------------------


def test_a_management_command_prints_no_axes_banner():
    environment = {**os.environ, "LOG_LEVEL": "INFO"}  # the banner is an INFO line: let INFO through
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    assert "AXES" not in result.stdout + result.stderr
