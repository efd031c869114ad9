"""The web UI in a real browser: headless Chromium driven by Selenium against pytest-django's live server.

Events go in through the HTTP API of the live server; people log in through the login form; the
figures the pages show are checked against the read API and against sums computed here from the
prices. One browser serves the whole module (a fresh session per test), so the file stays fast.

Needs Debian's `chromium` and `chromium-driver`. Outside CI a missing browser skips these tests;
under CI=true it fails them, so a broken image cannot pass by skipping.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from billing.services import budget_create
from billing.templatetags.humanize_money import usd
from metrics.templatetags.metrics_format import full_money, thousands
from tests.conftest import event, make_price
from tests.web_support import page_settings

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported by the `browser` fixture
    webdriver = None

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
WAIT = 10

pytestmark = [pytest.mark.django_db(transaction=True)]

# Prices (USD per million tokens): test-model 2 in / 8 out (conftest), big-model 10 in / 30 out.
PRICES = {"test-model": (Decimal(2), Decimal(8)), "big-model": (Decimal(10), Decimal(30))}

# (request_id, team, model, prompt, output, hours ago, extra fields). Costs are all different,
# so sorting by cost has one right answer.
ACME_EVENTS = [
    ("r01", "chatbot", "test-model", 1000, 500, 1, {"user_id": "alice"}),
    ("r02", "chatbot", "big-model", 2000, 1000, 2, {"user_id": "bob", "cache_hit": True}),
    ("r03", "search", "test-model", 4000, 2000, 3, {"user_id": "carol"}),
    ("r04", "search", "big-model", 10000, 5000, 4, {"user_id": "alice", "status": "error", "error_message": "boom"}),
    ("r05", "chatbot", "test-model", 500, 250, 5, {"user_id": "alice", "query_type": "rag"}),
    ("r06", "search", "test-model", 300, 100, 10, {"user_id": "dave"}),
    # Older than 24 hours, within 7 days: only the 7-day range counts them.
    ("r07", "chatbot", "big-model", 30000, 10000, 50, {"user_id": "bob"}),
    ("r08", "search", "test-model", 7000, 3000, 80, {"user_id": "carol"}),
    ("r09", "chatbot", "test-model", 1500, 700, 100, {"user_id": "erin"}),
]
GLOBEX_EVENTS = [
    ("g01", "chatbot", "test-model", 123000, 45000, 2, {"user_id": "hank"}),
    ("g02", "chatbot", "test-model", 1000, 1000, 6, {"user_id": "hank"}),
]


def cost(model: str, prompt: int, output: int) -> Decimal:
    per_in, per_out = PRICES[model]
    return (per_in * prompt + per_out * output) / Decimal(1_000_000)


def expected(events, *, hours: int = 24, team: str | None = None) -> dict:
    chosen = [e for e in events if e[5] < hours and (team is None or e[1] == team)]
    return {
        "ids": {e[0] for e in chosen},
        "requests": len(chosen),
        "cost": sum((cost(e[2], e[3], e[4]) for e in chosen), Decimal(0)),
        "tokens": sum(e[3] + e[4] for e in chosen),
    }


# --- HTTP against the live server -------------------------------------------------------------------


def http(live_server, method: str, path: str, *, token: str | None = None, body=None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(live_server.url + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def send_events(live_server, token: str, rows) -> None:
    now = datetime.now(UTC)
    items = []
    for request_id, team, model, prompt, output, hours_ago, extra in rows:
        items.append(
            event(request_id=request_id, team_alias=team, model=model, prompt_tokens=prompt, output_tokens=output,
                  latency_ms=100 + 10 * len(items), timestamp=(now - timedelta(hours=hours_ago)).isoformat(),
                  **extra)
        )
    status, body = http(live_server, "POST", "/api/v1/events", token=token, body=items)
    assert status == 200, body
    assert body["accepted"] == len(items), body


# --- the browser ----------------------------------------------------------------------------------


def _no_browser(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"browser tests need Chromium: {reason} (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if webdriver is None:
        _no_browser("the selenium package is not installed")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            _no_browser(f"{path} is missing")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                     "--window-size=1400,1800"):
        options.add_argument(argument)
    try:
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as error:
        _no_browser(f"Chromium did not start: {error.msg}")
    browser.set_page_load_timeout(30)
    browser.set_script_timeout(20)
    yield browser
    browser.quit()


@pytest.fixture
def browser(driver, live_server, settings):
    """The shared browser with no session, on this test's live server."""
    page_settings(settings)
    driver.get(live_server.url + "/accounts/login/")
    driver.delete_all_cookies()
    yield driver
    driver.get(live_server.url + "/accounts/login/")
    driver.delete_all_cookies()


@pytest.fixture
def acme_data(world, live_server):
    make_price("big-model", input="10", output="30")
    send_events(live_server, world.ingest, ACME_EVENTS)
    send_events(live_server, world.globex_token, GLOBEX_EVENTS)
    return world


def wait(driver, condition, timeout: float = WAIT):
    return WebDriverWait(driver, timeout).until(condition)


def replaced(old):
    """The page `old` belonged to is gone: selenium's staleness_of, also when Chromium, asked about a
    node in the middle of the navigation, answers "does not belong to the document" as an unknown
    error instead of a stale element reference."""

    def condition(driver) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return condition


def loaded(driver) -> bool:
    return driver.execute_script("return document.readyState") == "complete"


def log_in(driver, live_server, email: str, password: str) -> None:
    driver.get(live_server.url + "/accounts/login/")
    driver.find_element(By.ID, "id_username").send_keys(email)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(driver, lambda d: "/accounts/login/" not in d.current_url and loaded(d))


def kpi(driver, key: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'[data-bind="kpis.{key}.display"]').text


def query(driver) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(driver.current_url).query).items()}


def fetch(driver, path: str) -> dict:
    """GET a path from the page, with the browser's own cookies: status, content type and body."""
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: "same-origin"})
          .then(r => r.text().then(body => done({status: r.status, type: r.headers.get("Content-Type"), body})))
          .catch(e => done({status: -1, type: "", body: String(e)}));
        """,
        path,
    )


def screenshot(driver, name: str) -> Path:
    """The whole page, not only the window: the window grows to the page's height for the picture."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], max(size["height"], min(height + 150, 8000)))
    try:
        path = ARTIFACTS / name
        assert driver.save_screenshot(str(path))
        return path
    finally:
        driver.set_window_size(size["width"], size["height"])


CHARTS_JS = """
return Array.from(document.querySelectorAll("canvas")).map(function (canvas) {
  var chart = (typeof Chart !== "undefined") ? Chart.getChart(canvas) : undefined;
  return {
    id: canvas.id,
    type: chart ? chart.config.type : null,
    width: canvas.width,
    height: canvas.height,
    labels: chart ? chart.data.labels.length : 0,
    data: chart ? chart.data.datasets.map(function (d) { return d.data; }) : [],
  };
});
"""


def numbers(values) -> list[float]:
    return [v for v in values if isinstance(v, int | float)]


# --- 1. the dashboard ---------------------------------------------------------------------------


def test_dashboard_kpis_and_charts_match_the_api(browser, live_server, acme_data):
    world = acme_data
    log_in(browser, live_server, "owner@acme.test", "pw-owner-1")
    assert urlsplit(browser.current_url).path == "/o/acme/"
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Acme")

    cards = browser.find_elements(By.CSS_SELECTOR, ".kpis .kpi")
    assert [card.find_element(By.CLASS_NAME, "label").text for card in cards] == [
        "Total cost", "Total tokens", "Average latency", "Cache hit rate", "Total requests", "Error rate"]
    assert all(card.find_element(By.CLASS_NAME, "value").text not in ("", "—") for card in cards)

    status, metrics = http(live_server, "GET", "/api/v1/dashboard/metrics?time_range_hours=24", token=world.read)
    assert status == 200, metrics
    day = expected(ACME_EVENTS, hours=24)
    assert metrics["total_requests"] == day["requests"] == 6
    assert Decimal(str(metrics["total_cost"])) == day["cost"]
    assert kpi(browser, "total_requests") == thousands(metrics["total_requests"])
    assert kpi(browser, "total_cost") == usd(Decimal(str(metrics["total_cost"]))) == usd(day["cost"])
    assert kpi(browser, "total_tokens") == thousands(metrics["total_tokens"]) == thousands(day["tokens"])
    assert kpi(browser, "error_rate") == f"{metrics['error_rate']:.1f}%"  # 1 of 6
    assert kpi(browser, "cache_hit_rate") == f"{metrics['cache_hit_rate']:.1f}%"

    wait(browser, lambda d: d.execute_script("return typeof Chart !== 'undefined'"))
    charts = {chart["id"]: chart for chart in browser.execute_script(CHARTS_JS)}
    assert {"chart-trend", "chart-model-share", "chart-tokens", "chart-query-types", "chart-percentiles",
            "chart-latency", "chart-cache", "chart-cache-lookup"} <= set(charts)
    for chart in charts.values():
        assert chart["type"], f"{chart['id']} has no Chart.js instance"
        assert chart["data"] and len(chart["data"][0]) > 0, f"{chart['id']} has no data"
        assert chart["width"] > 0 and chart["height"] > 0, f"{chart['id']} was not laid out"
    trend_cost, trend_requests = charts["chart-trend"]["data"]
    assert sum(numbers(trend_requests)) == day["requests"]
    assert sum(numbers(trend_cost)) == pytest.approx(float(day["cost"]))
    assert sum(numbers(charts["chart-model-share"]["data"][0])) == pytest.approx(float(day["cost"]))
    assert charts["chart-model-share"]["labels"] == 2  # big-model, test-model
    prompt, output = charts["chart-tokens"]["data"]
    assert sum(numbers(prompt)) + sum(numbers(output)) == day["tokens"]
    assert sum(numbers(charts["chart-latency"]["data"][0])) == day["requests"]
    assert numbers(charts["chart-cache"]["data"][0]) == [1, 5]

    # The dashboard's own JSON (the auto-refresh) agrees with what the page shows.
    answer = fetch(browser, "/o/acme/dashboard.json")
    assert answer["status"] == 200 and answer["type"].startswith("application/json")
    board = json.loads(answer["body"])
    assert board["kpis"]["total_requests"]["display"] == kpi(browser, "total_requests")
    assert board["kpis"]["total_cost"]["display"] == kpi(browser, "total_cost")

    shot = screenshot(browser, "dashboard.png")
    assert shot.stat().st_size > 10_000


# --- 2. filters ---------------------------------------------------------------------------------


def apply_filters(driver, **choices) -> None:
    form = driver.find_element(By.CSS_SELECTOR, "form[data-filters]")
    for name, value in choices.items():
        Select(form.find_element(By.NAME, name)).select_by_value(value)
    old = driver.find_element(By.TAG_NAME, "html")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, replaced(old))
    wait(driver, loaded)


def test_filters_change_the_kpis_and_live_in_the_url(browser, live_server, acme_data):
    world = acme_data
    log_in(browser, live_server, "owner@acme.test", "pw-owner-1")
    everything = expected(ACME_EVENTS, hours=24)
    assert kpi(browser, "total_requests") == str(everything["requests"])

    apply_filters(browser, team="chatbot")
    assert query(browser) == {"range": "24h", "team": "chatbot"}  # empty fields stay out of the URL
    chatbot_day = expected(ACME_EVENTS, hours=24, team="chatbot")
    assert kpi(browser, "total_requests") == str(chatbot_day["requests"]) == "3"
    assert kpi(browser, "total_cost") == usd(chatbot_day["cost"])
    assert "team chatbot" in browser.find_element(By.TAG_NAME, "h1").text
    _, api_day = http(live_server, "GET", "/api/v1/dashboard/metrics?time_range_hours=24&team_alias=chatbot",
                      token=world.read)
    assert api_day["total_requests"] == chatbot_day["requests"]

    apply_filters(browser, range="7d")
    assert query(browser) == {"range": "7d", "team": "chatbot"}
    chatbot_week = expected(ACME_EVENTS, hours=24 * 7, team="chatbot")
    assert kpi(browser, "total_requests") == str(chatbot_week["requests"]) == "5"
    assert kpi(browser, "total_cost") == usd(chatbot_week["cost"])
    assert kpi(browser, "total_tokens") == thousands(chatbot_week["tokens"])
    _, api_week = http(live_server, "GET", "/api/v1/dashboard/metrics?time_range_hours=168&team_alias=chatbot",
                       token=world.read)
    assert Decimal(str(api_week["total_cost"])) == chatbot_week["cost"]
    # The choices survive the reload: the form shows what the URL says.
    form = browser.find_element(By.CSS_SELECTOR, "form[data-filters]")
    assert Select(form.find_element(By.NAME, "range")).first_selected_option.get_attribute("value") == "7d"
    assert Select(form.find_element(By.NAME, "team")).first_selected_option.get_attribute("value") == "chatbot"

    apply_filters(browser, team="")
    assert query(browser) == {"range": "7d"}
    assert kpi(browser, "total_requests") == str(expected(ACME_EVENTS, hours=24 * 7)["requests"]) == "9"


# --- 3. requests: sorting and CSV -----------------------------------------------------------------


def request_ids(driver) -> list[str]:
    return [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "table.requests tbody tr td:nth-child(2)")]


def click_heading(driver, heading: str) -> None:
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, f"//table[contains(@class,'requests')]//th/a[starts-with(normalize-space(.), "
                                  f"'{heading}')]").click()
    wait(driver, replaced(old))
    wait(driver, loaded)


def test_requests_sort_by_clicking_a_heading_and_csv_download(browser, live_server, acme_data):
    log_in(browser, live_server, "owner@acme.test", "pw-owner-1")
    browser.get(live_server.url + "/o/acme/requests/?range=7d")
    by_time = sorted(ACME_EVENTS, key=lambda e: e[5])  # newest first by default
    assert request_ids(browser) == [e[0] for e in by_time]

    by_cost = sorted(ACME_EVENTS, key=lambda e: cost(e[2], e[3], e[4]), reverse=True)
    click_heading(browser, "Cost")
    assert query(browser) == {"range": "7d", "sort": "-cost"}
    assert request_ids(browser) == [e[0] for e in by_cost]
    heading = browser.find_element(By.XPATH, "//th[@aria-sort]")
    assert heading.get_attribute("aria-sort") == "descending" and heading.text.startswith("Cost")

    click_heading(browser, "Cost")
    assert query(browser)["sort"] == "cost"
    assert request_ids(browser) == [e[0] for e in reversed(by_cost)]

    click_heading(browser, "Tokens")
    assert query(browser)["sort"] == "-total_tokens"
    assert request_ids(browser) == [e[0] for e in sorted(ACME_EVENTS, key=lambda e: -(e[3] + e[4]))]

    # The CSV link carries the same filters and order; fetch it with the browser's session.
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "Download CSV")
    href = link.get_attribute("href")
    assert parse_qs(urlsplit(href).query) == {"range": ["7d"], "sort": ["-total_tokens"]}
    answer = fetch(browser, href)
    assert answer["status"] == 200 and answer["type"].startswith("text/csv"), answer
    rows = list(csv.DictReader(io.StringIO(answer["body"])))
    order = sorted(ACME_EVENTS, key=lambda e: -(e[3] + e[4]))
    assert [row["request_id"] for row in rows] == [e[0] for e in order]
    for row, (request_id, team, model, prompt, output, _, extra) in zip(rows, order, strict=True):
        assert (row["team"], row["model"]) == (team, model), request_id
        assert (int(row["prompt_tokens"]), int(row["output_tokens"])) == (prompt, output)
        assert int(row["total_tokens"]) == prompt + output
        assert Decimal(row["cost_usd"]) == cost(model, prompt, output)
        assert row["cost_usd"] == full_money(Decimal(row["cost_usd"]))
        assert row["status"] == extra.get("status", "success")
        assert row["user_id"] == extra["user_id"]
        assert row["is_priced"] == "true"
    assert not {row["request_id"] for row in rows} & {e[0] for e in GLOBEX_EVENTS}

    # Filtered by team, the CSV holds that team's requests only.
    answer = fetch(browser, "/o/acme/requests.csv?range=7d&team=search")
    assert {row["request_id"] for row in csv.DictReader(io.StringIO(answer["body"]))} == expected(
        ACME_EVENTS, hours=24 * 7, team="search")["ids"]


# --- 4. tokens ----------------------------------------------------------------------------------


def test_create_a_token_see_it_once_and_revoke_it(browser, live_server, acme_data):
    log_in(browser, live_server, "owner@acme.test", "pw-owner-1")
    browser.get(live_server.url + "/o/acme/tokens/")
    browser.find_element(By.NAME, "name").send_keys("browser test reader")
    read = browser.find_element(By.NAME, "can_read")
    if not read.is_selected():
        read.click()
    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.XPATH, "//button[normalize-space(.)='Create token']").click()
    wait(browser, replaced(old))

    secret = browser.find_element(By.ID, "new-token").get_attribute("value")
    assert len(secret) > 20
    assert "Copy your new token now" in browser.find_element(By.CSS_SELECTOR, ".secret-box").text
    status, body = http(live_server, "GET", "/api/v1/dashboard/metrics", token=secret)
    assert status == 200, body
    assert body["total_requests"] == expected(ACME_EVENTS, hours=24)["requests"]

    # Shown once: the list page no longer has it, anywhere.
    browser.get(live_server.url + "/o/acme/tokens/")
    assert not browser.find_elements(By.ID, "new-token")
    assert secret not in browser.page_source
    row = browser.find_element(By.XPATH, "//tr[td[normalize-space(.)='browser test reader']]")
    assert "active" in row.text

    old = browser.find_element(By.TAG_NAME, "html")
    row.find_element(By.XPATH, ".//button[normalize-space(.)='Revoke']").click()
    alert = wait(browser, ec.alert_is_present())
    assert "Revoke this token?" in alert.text
    alert.accept()
    wait(browser, replaced(old))
    wait(browser, loaded)
    assert urlsplit(browser.current_url).path == "/o/acme/tokens/"
    assert "revoked" in browser.find_element(By.CSS_SELECTOR, ".messages").text
    row = browser.find_element(By.XPATH, "//tr[td[normalize-space(.)='browser test reader']]")
    assert "revoked" in row.text and not row.find_elements(By.XPATH, ".//button")

    status, body = http(live_server, "GET", "/api/v1/dashboard/metrics", token=secret)
    assert status == 401, body
    # Other tokens are untouched.
    assert http(live_server, "GET", "/api/v1/dashboard/metrics", token=acme_data.read)[0] == 200


# --- 5. another organization ----------------------------------------------------------------------


def test_outsider_sees_nothing_of_acme(browser, live_server, acme_data):
    log_in(browser, live_server, "boss@globex.test", "pw-out-1")
    assert urlsplit(browser.current_url).path == "/o/globex/"
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Globex")
    globex = expected(GLOBEX_EVENTS, hours=24)
    assert kpi(browser, "total_requests") == str(globex["requests"]) == "2"
    assert kpi(browser, "total_cost") == usd(globex["cost"])
    assert kpi(browser, "total_tokens") == thousands(globex["tokens"])
    page = browser.page_source
    assert "Acme" not in page and "acme" not in page
    for request_id, *_ in ACME_EVENTS:
        assert request_id not in page
    browser.get(live_server.url + "/o/globex/requests/?range=7d")
    assert request_ids(browser) == ["g01", "g02"]

    for path in ("/o/acme/", "/o/acme/requests/", "/o/acme/requests.csv", "/o/acme/dashboard.json",
                 "/o/acme/teams/chatbot/", "/o/acme/tokens/", "/o/acme/requests/r01/"):
        assert fetch(browser, path)["status"] == 404, path
    browser.get(live_server.url + "/o/acme/")
    assert "Not Found" in browser.find_element(By.TAG_NAME, "body").text
    assert "r01" not in browser.page_source


# --- 6. the team page ---------------------------------------------------------------------------


def test_team_page(browser, live_server, acme_data):
    # This calendar month: the events of the last 100 hours may straddle the month's start.
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    hours = (datetime.now(UTC) - start) / timedelta(hours=1)
    month = expected(ACME_EVENTS, hours=hours, team="chatbot")
    limit = (month["cost"] * 2).quantize(Decimal("0.01"))  # half used: the bar is half full
    budget_create(organization=acme_data.acme, team=acme_data.chatbot, amount_usd=limit, period="monthly")

    log_in(browser, live_server, "owner@acme.test", "pw-owner-1")
    browser.get(live_server.url + "/o/acme/teams/chatbot/")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Team chatbot")
    values = [v.text for v in browser.find_elements(By.CSS_SELECTOR, ".kpis .kpi .value")]
    assert values[0] == usd(month["cost"])
    assert values[1] == str(month["requests"])
    card = browser.find_element(By.CSS_SELECTOR, ".budget-card")
    assert f"{usd(month['cost'])} of {usd(limit)}" in card.text
    bar = card.find_element(By.CSS_SELECTOR, "[role=progressbar]")
    assert 45 <= float(bar.get_attribute("aria-valuenow")) <= 55
    shot = screenshot(browser, "team.png")
    assert shot.stat().st_size > 10_000


def test_dashboard_marks_an_anomalous_hour_on_the_cost_trend(browser, live_server, acme_data):
    from metrics.models import SpendAnomaly
    from metrics.rollups import hour_of

    # As metrics.anomalies records it: chatbot's hour of r02 (two hours ago) far above its usual spend.
    hour = hour_of(datetime.now(UTC) - timedelta(hours=2))
    SpendAnomaly.objects.create(
        organization=acme_data.acme, team=acme_data.chatbot, hour=hour, spend_usd=Decimal("0.05"),
        baseline_median_usd=Decimal("0.001"), baseline_mad_usd=Decimal(0), threshold_usd=Decimal("0.011"),
    )  # fmt: skip
    log_in(browser, live_server, "owner@acme.test", "pw-owner-1")
    wait(browser, lambda d: d.execute_script("return typeof Chart !== 'undefined'"))

    charts = {chart["id"]: chart for chart in browser.execute_script(CHARTS_JS)}
    cost, _requests, marks = charts["chart-trend"]["data"]
    marked = [i for i, value in enumerate(marks) if value is not None]
    assert len(marked) == 1 and marks[marked[0]] == cost[marked[0]]
    listed = browser.find_element(By.CSS_SELECTOR, "[data-anomalies]").text
    assert "Unusual spend" in listed and "chatbot" in listed
    browser.execute_script("document.getElementById('chart-trend').scrollIntoView()")
    shot = screenshot(browser, "dashboard-anomaly.png")
    assert shot.stat().st_size > 10_000
