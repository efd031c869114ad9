"""The Insights page in headless Chromium: a member opens it from the nav, runs a what-if and sees the
result equal to `what_if` for the same calls (screenshot saved to test-artifacts/insights.png)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from metrics.insights import InsightFilters, what_if
from teams.access import scope_for_user
from tests.conftest import make_price
from tests.test_browser import (  # noqa: F401 -- fixtures
    browser,
    driver,
    loaded,
    log_in,
    replaced,
    screenshot,
    send_events,
    wait,
)

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_member_opens_insights_and_runs_a_what_if(browser, live_server, world):  # noqa: F811
    make_price("cheap-model", input="0.5", output="1")
    make_price("budget-model", input="0.1", output="0.2", provider="otherprov")
    rows = [
        (f"r{n}", "chatbot" if n % 2 else "search", "test-model", 20_000 * (n + 1), 2000 * (n + 1), 300 + 40 * n,
         {"user_id": "alice", "query_type": "rag" if n % 3 else "chat"})
        for n in range(6)
    ]
    rows.append(("k1", "chatbot", "cheap-model", 1000, 100, 250, {"user_id": "bob"}))
    send_events(live_server, world.ingest, rows)
    log_in(browser, live_server, "member@acme.test", "pw-member-1")
    browser.find_element(By.LINK_TEXT, "Insights").click()
    wait(browser, loaded)
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Insights")
    assert browser.find_elements(By.CSS_SELECTOR, "#recommendations tbody tr[data-candidate]")

    Select(browser.find_element(By.NAME, "model")).select_by_value("test-model")
    browser.find_element(By.NAME, "alternative").send_keys("testprov/cheap-model")
    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, "what-if-run").click()
    wait(browser, replaced(old))
    wait(browser, loaded)
    assert "model=test-model" in browser.current_url and "alternative=testprov%2Fcheap-model" in browser.current_url

    result = browser.find_element(By.ID, "what-if-result")
    shown = {cell.get_attribute("data-figure"): cell.get_attribute("data-value")
             for cell in result.find_elements(By.CSS_SELECTOR, "[data-figure]")}  # fmt: skip
    end = datetime.now(UTC)
    want = what_if(scope=scope_for_user(world.member, "acme"),
                   filters=InsightFilters(start=end - timedelta(days=30), end=end), model="test-model",
                   alternative="testprov/cheap-model")  # fmt: skip
    assert int(shown["requests"]) == want["requests"] == 6
    assert Decimal(shown["savings"]) == want["savings"] > 0
    assert Decimal(shown["actual_cost"]) == want["actual_cost"]
    screenshot(browser, "insights.png")
