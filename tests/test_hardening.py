"""Holes a hostile user or a careless operator found (hardening round 2); each test fails
without its fix."""

import csv
import io
import threading
import time

import pytest
from django.core.cache import cache
from django.db import connection, connections, transaction
from django.test import Client
from rest_framework.throttling import ScopedRateThrottle

from billing import ledger
from billing.exports import safe_cell
from billing.models import CreditTransaction, Wallet

pytestmark = pytest.mark.usefixtures("agent_costs")


@pytest.fixture
def strict_rates(monkeypatch):
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth": "3/min", "grant": "2/min", "agents": "2/min"})
    cache.clear()
    yield
    cache.clear()


# --- access -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_forged_forwarded_for_header_does_not_escape_the_login_throttle(anon, user, strict_rates):
    body = {"email": user.email, "password": "wrong"}
    codes = [
        anon.post("/auth/token", body, format="json", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code
        for i in range(4)
    ]
    assert codes == [401, 401, 401, 429]


@pytest.mark.django_db
def test_behind_a_proxy_metrics_need_the_token_compared_in_constant_time(client, settings):
    settings.NUM_PROXIES = 1  # every request now arrives from the proxy, 127.0.0.1
    assert client.get("/metrics").status_code == 403
    settings.METRICS_TOKEN = "scrape-token"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-tokeX").status_code == 403


# --- lock waits --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_connection_bounds_its_lock_wait(settings):
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.innodb_lock_wait_timeout")
        assert cursor.fetchone()[0] == settings.LEDGER_LOCK_WAIT_SECONDS
    assert settings.LEDGER_LOCK_WAIT_SECONDS * 2 <= settings.LEDGER_RETRY_BUDGET_SECONDS < 30


@pytest.mark.django_db(transaction=True)
def test_lock_wait_retries_stop_within_the_budget(user, settings):
    settings.LEDGER_LOCK_WAIT_SECONDS = 1
    settings.LEDGER_RETRY_BUDGET_SECONDS = 2.5
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    locked, release = threading.Event(), threading.Event()

    def hold_the_wallet_lock():
        try:
            with transaction.atomic():
                Wallet.objects.select_for_update().get(user=user)
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    blocker = threading.Thread(target=hold_the_wallet_lock)
    blocker.start()
    assert locked.wait(10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        started = time.monotonic()
        with pytest.raises(ledger.LedgerBusy):
            ledger.charge(user_id=user.id, amount=5, agent_id="a")
        waited = time.monotonic() - started
    finally:
        release.set()
        blocker.join()
        connection.close()  # back to the configured lock wait

    # Five attempts of a 1 s wait would take 5 s; the budget stops after two or three.
    assert waited < 3.5
    assert Wallet.objects.get(user=user).balance_credits == 100


# --- input -------------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [100, 100_000], ids=["deeper-than-allowed", "deeper-than-the-stack"])
@pytest.mark.parametrize("path", ["/auth/register", "/auth/token", "/api/profile-my-data", "/billing/holds"])
def test_deeply_nested_json_is_a_400_not_a_500(user_client, path, depth):
    body = "[" * depth + "]" * depth
    nested = '{"tool_configuration": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    for payload in (body, nested):
        response = user_client.generic("POST", path, payload, content_type="application/json")
        assert response.status_code == 400, (path, response.status_code)
        assert response.json()["error_code"] == "MALFORMED_REQUEST"


@pytest.mark.django_db
def test_csv_exports_defuse_cells_a_spreadsheet_would_run(finance_viewer, user):
    for reason in ('=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "plain"):
        ledger.grant(user_id=user.id, amount=1, reason=reason)
    client = Client()
    client.force_login(finance_viewer)
    response = client.get("/admin/billing/credittransaction/export/")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    reasons = {row["reason"] for row in rows}
    assert "plain" in reasons
    for reason in reasons - {"plain"}:
        assert reason.startswith("'"), reason
    assert {int(row["amount"]) for row in rows} == {1}  # numbers stay numbers
    assert CreditTransaction.objects.count() == 5
    # Reasons are stored stripped; a tab or carriage return at the start of any other cell is defused too.
    assert [safe_cell(v) for v in ("\tx", "\rx", "x\t", 5, None)] == ["'\tx", "'\rx", "x\t", 5, None]
