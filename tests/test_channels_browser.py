"""The Notifications page in headless Chromium: an admin adds a Slack channel and a webhook, copies
the webhook's secret once, sends a test to each, and sees the delivery history (screenshot saved)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from tests.http_receiver import http_receiver
from tests.test_browser import browser, driver, loaded, log_in, replaced, screenshot, wait  # noqa: F401 -- fixtures
from tests.web_support import make_admin

pytestmark = [pytest.mark.django_db(transaction=True)]


def add_channel(page, kind: str, name: str, url: str, team: str | None = None) -> None:
    Select(page.find_element(By.NAME, "kind")).select_by_value(kind)
    page.find_element(By.NAME, "name").send_keys(name)
    page.find_element(By.NAME, "url").send_keys(url)
    if team:
        page.find_element(By.XPATH, f"//input[@name='teams']/parent::label[contains(., '{team}')]/input").click()
    old = page.find_element(By.TAG_NAME, "html")
    page.find_element(By.XPATH, "//button[normalize-space(.)='Add channel']").click()
    wait(page, replaced(old))
    wait(page, loaded)


def press(page, row_name: str, button: str) -> None:
    row = page.find_element(By.XPATH, f"//tr[td[normalize-space(.)='{row_name}']]")
    old = page.find_element(By.TAG_NAME, "html")
    row.find_element(By.XPATH, f".//button[normalize-space(.)='{button}']").click()
    wait(page, replaced(old))
    wait(page, loaded)


def test_an_admin_adds_slack_and_a_webhook_sends_tests_and_sees_the_history(browser, live_server, world):  # noqa: F811
    admin = make_admin(world)
    admin.set_password("pw-admin-1")
    admin.save()
    with http_receiver() as slack, http_receiver(500) as hook:
        log_in(browser, live_server, "admin@acme.test", "pw-admin-1")
        browser.find_element(By.LINK_TEXT, "Notifications").click()
        wait(browser, loaded)
        assert browser.find_element(By.TAG_NAME, "h1").text == "Notifications"

        add_channel(browser, "slack", "#ml-costs", slack.url)
        assert "added" in browser.find_element(By.CSS_SELECTOR, ".secret-box").text
        add_channel(browser, "webhook", "ops pager", hook.url, team="chatbot")
        secret = browser.find_element(By.ID, "new-secret").get_attribute("value")
        assert len(secret) >= 40

        press(browser, "#ml-costs", "Send test")
        assert "Test delivered" in browser.find_element(By.CSS_SELECTOR, ".messages").text
        press(browser, "ops pager", "Send test")  # the receiver answers 500 first
        assert "failed: HTTP 500" in browser.find_element(By.CSS_SELECTOR, ".messages").text
        press(browser, "ops pager", "Send test")
        assert secret not in browser.page_source  # shown once only

        history = browser.find_element(By.XPATH, "//section[h2[normalize-space(.)='Delivery history']]").text
        assert history.count("delivered") == 2 and "failed" in history and "HTTP 500" in history
        shot = screenshot(browser, "notifications.png")
        slack_body = json.loads(slack.wait_for(1)[0].body)
        hooks = hook.wait_for(2)

    assert shot.stat().st_size > 10_000
    assert set(slack_body) == {"text", "blocks"}
    last = hooks[-1]
    assert (
        last.headers["x-llmcost-signature"]
        == "sha256=" + hmac.new(secret.encode(), last.body, hashlib.sha256).hexdigest()
    )
