"""The finance console in a real browser: headless Chromium (Debian's) driven by Selenium.

A Finance user logs in, grants credits with a reason and sees the ledger row and the new
balance, edits an agent's cost and sees its history, and opens the reports page; a
screenshot of it is saved to test-artifacts/admin-reports.png.
"""

import os
import shutil
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from agents.models import AgentCost
from billing import ledger
from billing.models import CreditTransaction
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("agent_costs")]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PASSWORD = "finance-browser-test-pw"


@pytest.fixture
def browser(tmp_path):
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), "Debian chromium + chromium-driver are needed"
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,2000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.fixture
def finance_user(staff):
    staff.set_password(PASSWORD)
    staff.save()
    return staff


def _week_of_activity(customer):
    """Purchases, grants and agent charges spread over the last seven days, for the chart."""
    now = timezone.now()
    for days_ago in range(7, 0, -1):
        with mock.patch("django.utils.timezone.now", return_value=now - timedelta(days=days_ago)):
            ledger.grant(user_id=customer.id, amount=300 + 40 * days_ago, reason="weekly top-up")
            for agent_id, cost in (("profile-my-data", 25), ("clean-my-data", 40), ("master-my-data", 60)):
                for _ in range(days_ago % 3 + 1):
                    ledger.charge(user_id=customer.id, amount=cost, agent_id=agent_id)


def test_finance_user_grants_edits_a_cost_and_reads_the_reports(live_server, browser, finance_user):
    customer = UserFactory(email="customer@example.com")
    _week_of_activity(customer)
    balance_before = customer.wallet.balance_credits
    wait = WebDriverWait(browser, 10)

    # Log in through the admin's own form.
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(finance_user.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(EC.presence_of_element_located((By.ID, "finance-module")))

    # Grant credits with a reason; the user page shows the new row and balance.
    browser.get(f"{live_server.url}/admin/users/user/{customer.pk}/change/")
    browser.find_element(By.ID, "grant-credits").click()
    browser.find_element(By.NAME, "credits").send_keys("500")
    browser.find_element(By.NAME, "reason").send_keys("Goodwill after outage")
    browser.find_element(By.CSS_SELECTOR, "#credits-form input[type=submit]").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    assert f"New balance: {balance_before + 500}" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    assert f"Balance {balance_before + 500}" in browser.find_element(By.ID, "wallet-balance").text
    first_row = browser.find_element(By.CSS_SELECTOR, "#recent-transactions tbody tr").text
    assert "grant" in first_row and "+500" in first_row and "Goodwill after outage" in first_row
    assert finance_user.email in first_row
    grant = CreditTransaction.objects.filter(wallet__user=customer).first()
    assert (grant.amount, grant.actor_id) == (500, finance_user.id)

    # Edit an agent's cost with a reason; its page shows the history.
    agent = AgentCost.objects.get(agent_id="clean-my-data")
    browser.get(f"{live_server.url}/admin/agents/agentcost/{agent.pk}/change/")
    cost = browser.find_element(By.NAME, "cost_credits")
    cost.clear()
    cost.send_keys("45")
    browser.find_element(By.NAME, "change_reason").send_keys("Q4 price review")
    browser.find_element(By.NAME, "_continue").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    history = browser.find_element(By.ID, "changes-group").text
    assert "Q4 price review" in history and "40" in history and "45" in history
    assert AgentCost.objects.get(pk=agent.pk).cost_credits == 45

    # The reports page with its chart, saved as a screenshot.
    browser.get(f"{live_server.url}/admin/reports/")
    chart = wait.until(EC.visibility_of_element_located((By.ID, "credits-chart")))
    assert chart.size["width"] > 600 and chart.size["height"] > 150
    bars = browser.find_elements(By.CSS_SELECTOR, "#credits-chart rect[height]")
    assert sum(1 for bar in bars if float(bar.get_attribute("height")) > 0) >= 14
    usage = browser.find_element(By.ID, "agent-usage").text
    assert "master-my-data" in usage and "profile-my-data" in usage
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "admin-reports.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000


def test_finance_staff_log_in_with_their_authenticator_code(live_server, browser, finance_user, settings):
    """With FINANCE_REQUIRE_2FA the admin's log-in form asks for the authenticator's code: the
    password alone is refused, password and the current TOTP code let the Finance user in."""
    settings.ADMIN_2FA_REQUIRED_GROUPS = ["Finance", "Finance viewer"]
    device = TOTPDevice.objects.create(user=finance_user, name="phone", confirmed=True)
    wait = WebDriverWait(browser, 10)

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(finance_user.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    errors = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".errornote, .errorlist")))
    assert "token" in errors.text.lower() or "code" in errors.text.lower()
    assert not browser.find_elements(By.ID, "finance-module")

    device.refresh_from_db()
    device.throttle_reset()
    code = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token()
    browser.find_element(By.NAME, "password").clear()
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    Select(browser.find_element(By.NAME, "otp_device")).select_by_visible_text("phone")  # listed after step one
    browser.find_element(By.NAME, "otp_token").send_keys(f"{code:06d}")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(EC.presence_of_element_located((By.ID, "finance-module")))
