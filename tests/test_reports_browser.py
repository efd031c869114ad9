"""The Reports page in headless Chromium: a member groups spend by a metadata key, sees the stacked
chart drawn, downloads the CSV of the table shown (screenshot saved to test-artifacts/reports.png)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from metrics.models import UsageEvent
from tests.test_browser import (  # noqa: F401 -- fixtures
    browser,
    driver,
    fetch,
    loaded,
    log_in,
    replaced,
    screenshot,
    send_events,
    wait,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

FEATURES = ("summary", "search", "chat", "summary", "search", "summary")


def test_a_member_groups_by_a_metadata_key_sees_the_chart_and_downloads_the_csv(browser, live_server, world):  # noqa: F811
    rows = [
        (f"r{n}", "chatbot" if n % 2 else "search", "test-model", 1000 * (n + 1), 400 * (n + 1), 3 + 20 * n,
         {"metadata": {"feature": feature}, "user_id": "alice"})
        for n, feature in enumerate(FEATURES)
    ]
    send_events(live_server, world.ingest, rows)
    log_in(browser, live_server, "member@acme.test", "pw-member-1")
    browser.find_element(By.LINK_TEXT, "Reports").click()
    wait(browser, loaded)
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Reports")

    key = browser.find_element(By.NAME, "group_key")
    assert not key.is_displayed()  # only beside a grouping set to "Metadata key…"
    Select(browser.find_element(By.NAME, "group")).select_by_value("metadata")
    assert key.is_displayed()
    key.send_keys("feature")
    Select(browser.find_element(By.NAME, "range")).select_by_value("7d")
    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "form[data-report-form] button[type=submit]").click()
    wait(browser, replaced(old))
    wait(browser, loaded)
    assert "group=metadata" in browser.current_url and "group_key=feature" in browser.current_url
    assert "team_alias=" not in browser.current_url  # empty fields stay out of the URL

    cells = browser.find_elements(By.CSS_SELECTOR, 'table.report tbody tr[data-row="group"] td:first-child')
    assert [cell.text for cell in cells] == ["summary", "search", "chat"]  # costliest first

    wait(browser, lambda d: d.execute_script("return typeof Chart !== 'undefined'"))
    chart = browser.execute_script(
        """
        var canvas = document.getElementById("chart-report");
        var chart = Chart.getChart(canvas);
        return chart && {type: chart.config.type, width: canvas.width, height: canvas.height,
                         labels: chart.data.labels.length,
                         stacks: chart.data.datasets.map(function (d) { return d.label; }),
                         sum: chart.data.datasets.reduce(function (s, d) {
                           return s + d.data.reduce(function (a, b) { return a + b; }, 0); }, 0)};
        """
    )
    since = datetime.now(UTC) - timedelta(days=7)
    events = list(UsageEvent.objects.filter(organization=world.acme, timestamp__gte=since))
    assert chart is not None and chart["type"] == "bar"
    assert chart["width"] > 0 and chart["height"] > 0
    assert chart["labels"] in (7, 8)  # a day each
    assert chart["stacks"] == ["summary", "search", "chat"]
    assert chart["sum"] == pytest.approx(float(sum((e.cost for e in events), Decimal(0))))

    link = browser.find_element(By.ID, "report-csv").get_attribute("href")
    download = fetch(browser, link)
    assert download["status"] == 200 and download["type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(download["body"])))
    assert [line["metadata.feature"] for line in lines] == ["summary", "search", "chat", ""]
    assert lines[-1]["row"] == "total" and int(lines[-1]["requests"]) == len(events) == len(FEATURES)
    assert Decimal(lines[-1]["cost_usd"]) == sum((e.cost for e in events), Decimal(0))
    shown_total = browser.find_element(By.CSS_SELECTOR, 'tr[data-row="total"] td').get_attribute("data-value")
    assert int(shown_total) == len(FEATURES)

    shot = screenshot(browser, "reports.png")
    assert shot.stat().st_size > 10_000
