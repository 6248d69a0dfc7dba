"""Holes a hostile user or a careless operator found (hardening round 2); each test fails
without its fix."""

import csv
import io
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.checks import run_checks
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from billing import ledger
from billing.exports import safe_cell
from billing.models import CreditHold, CreditTransaction, HoldStatus, StripeWebhookEvent, Wallet
from billing.reconcile import reconcile
from tests.concurrency import wallet_locked_elsewhere
from tests.conftest import bearer_client
from tests.factories import UserFactory
from tests.stripe_helpers import (
    checkout_event,
    deliver,
    dispute_closed_event,
    dispute_event,
    refund_event,
    refund_updated_event,
)

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
    with wallet_locked_elsewhere(user):
        started = time.monotonic()
        with pytest.raises(ledger.LedgerBusy):
            ledger.charge(user_id=user.id, amount=5, agent_id="a")
        waited = time.monotonic() - started

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


# --- money ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_settling_a_shortfall_never_forgives_held_credits(client, user, staff_client):
    """Bought 1,000 credits, held all of them, refunded in full (clawback 0, shortfall 1,000),
    staff settle, the holds are released: the refunded credits must not become spendable."""
    purchase = checkout_event(event_id="evt_buy", session_id="cs_buy", user_id=user.id, payment_intent="pi_buy")
    assert deliver(client, purchase).status_code == 200
    holds = [ledger.hold(user_id=user.id, amount=250, agent_id="a").hold for _ in range(4)]
    deliver(client, refund_event(event_id="evt_refund", payment_intent="pi_buy", amount_refunded=1000))
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits, wallet.shortfall_credits) == (1000, 1000, 1000)

    settle = {"user_id": user.id, "reason": "refund settled"}
    first = staff_client.post("/billing/admin/settle-shortfall", settle, format="json").json()
    assert first == {"collected": 0, "written_off": 0, "still_owed": 1000, "new_balance": 1000}

    for held in holds:
        ledger.release(hold_id=held.id)
    user_client = bearer_client(user)
    refused = user_client.post("/billing/charges", {"agent_id": "profile-my-data"}, format="json")
    assert refused.status_code == 402 and refused.json()["error_code"] == "BILLING_WALLET_IN_SHORTFALL"
    assert user_client.post("/billing/holds", {"agent_id": "profile-my-data"}, format="json").status_code == 402
    with pytest.raises(ledger.WalletInShortfall):
        ledger.charge(user_id=user.id, amount=1, agent_id="a")

    second = staff_client.post("/billing/admin/settle-shortfall", settle, format="json").json()
    assert second == {"collected": 1000, "written_off": 0, "still_owed": 0, "new_balance": 0}
    wallet.refresh_from_db()
    assert (wallet.balance_credits, wallet.held_credits, wallet.shortfall_credits) == (0, 0, 0)
    assert reconcile() == []


@pytest.mark.django_db
def test_a_client_key_equal_to_a_system_key_cannot_block_a_purchase(client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    sneaky = bearer_client(user).post(
        "/billing/charges",
        {"agent_id": "profile-my-data"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="stripe-checkout:cs_next",  # the key the purchase of cs_next writes
    )
    assert sneaky.status_code == 201

    purchase = checkout_event(event_id="evt_next", session_id="cs_next", user_id=user.id, payment_intent="pi_next")
    assert deliver(client, purchase).json()["status"] == "processed"
    assert Wallet.objects.get(user=user).balance_credits == 100 - 25 + 1000


@pytest.mark.django_db
def test_idempotency_keys_compare_byte_for_byte(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    client = bearer_client(user)
    answers = [
        client.post("/billing/charges", {"agent_id": "profile-my-data"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
        for key in ("key-a", "Key-A", "kéy-a", "key-a")
    ]
    assert [a.status_code for a in answers] == [201, 201, 201, 200]  # only the exact repeat replays
    assert Wallet.objects.get(user=user).balance_credits == 25
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND COLUMN_NAME IN ('idempotency_key', 'request_fingerprint', 'stripe_event_id', "
            "'stripe_checkout_session_id', 'stripe_payment_intent_id', 'payment_intent_id', 'stripe_customer_id') "
            "AND TABLE_NAME IN ('credit_transactions', 'credit_holds', 'credit_shortfalls', 'agent_runs', "
            "'credit_purchases', 'stripe_webhook_events', 'stripe_payment_intent_locks', 'users')"
        )
        collations = [row[0] for row in cursor.fetchall()]
    assert len(collations) >= 15 and set(collations) == {"utf8mb4_bin"}


@pytest.mark.django_db
def test_capturing_an_expired_hold_is_409_and_frees_its_credits_at_once(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    client = bearer_client(user)
    hold = client.post("/billing/holds", {"agent_id": "profile-my-data"}, format="json").json()
    CreditHold.objects.filter(pk=hold["hold_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = client.post(f"/billing/holds/{hold['hold_id']}/capture")

    assert response.status_code == 409 and response.json()["error_code"] == "HOLD_EXPIRED"
    assert CreditHold.objects.get(pk=hold["hold_id"]).status == HoldStatus.EXPIRED
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (100, 0)  # not waiting for expire_holds


@pytest.mark.django_db
@pytest.mark.parametrize("live_service", [False, True], ids=["test-service", "live-service"])
def test_an_event_from_the_other_stripe_mode_grants_nothing(client, user, settings, live_service):
    settings.STRIPE_LIVE_MODE = live_service
    event = checkout_event(event_id="evt_mode", session_id="cs_mode", user_id=user.id, payment_intent="pi_mode")
    event["livemode"] = not live_service

    response = deliver(client, event)

    assert response.status_code == 200 and response.json()["status"] == "failed"
    stored = StripeWebhookEvent.objects.get(stripe_event_id="evt_mode")
    assert "mode" in stored.error and "nothing was granted" in stored.error
    assert not CreditTransaction.objects.exists()


@pytest.mark.django_db
def test_a_won_dispute_gives_back_what_its_clawback_took_once(client, user):
    deliver(client, checkout_event(event_id="evt_b", session_id="cs_b", user_id=user.id, payment_intent="pi_b"))
    deliver(client, dispute_event(event_id="evt_dc", payment_intent="pi_b", amount=1000))
    assert Wallet.objects.get(user=user).balance_credits == 0

    won = dispute_closed_event(event_id="evt_won", payment_intent="pi_b", dispute_id="dp_1", amount=1000, status="won")
    assert deliver(client, won).json()["status"] == "processed"
    assert deliver(client, won).json()["duplicate"] is True
    # Another event about the same dispute (Stripe may send more than one) gives nothing more.
    again = dispute_closed_event(
        event_id="evt_won2", payment_intent="pi_b", dispute_id="dp_1", amount=1000, status="won"
    )
    deliver(client, again)
    lost = dispute_closed_event(
        event_id="evt_lost", payment_intent="pi_b", dispute_id="dp_2", amount=1000, status="lost"
    )
    assert deliver(client, lost).json()["status"] == "ignored"

    assert Wallet.objects.get(user=user).balance_credits == 1000
    rows = CreditTransaction.objects.filter(kind="clawback").order_by("id").values_list("amount", flat=True)
    assert list(rows) == [-1000, 1000]
    assert reconcile() == []


@pytest.mark.django_db
def test_a_failed_refund_cancels_its_shortfall_and_gives_back_what_was_taken(client, user):
    deliver(client, checkout_event(event_id="evt_b", session_id="cs_b", user_id=user.id, payment_intent="pi_b"))
    ledger.charge(user_id=user.id, amount=700, agent_id="a")
    deliver(client, refund_event(event_id="evt_rf", payment_intent="pi_b", amount_refunded=1000))
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.shortfall_credits) == (0, 700)  # 300 taken, 700 owed

    failed = refund_updated_event(
        event_id="evt_fail", payment_intent="pi_b", refund_id="re_1", amount=1000, status="failed"
    )
    assert deliver(client, failed).json()["status"] == "processed"
    deliver(
        client,
        refund_updated_event(
            event_id="evt_fail2", payment_intent="pi_b", refund_id="re_1", amount=1000, status="failed"
        ),
    )

    wallet.refresh_from_db()
    assert (wallet.balance_credits, wallet.shortfall_credits) == (300, 0)
    assert ledger.charge(user_id=user.id, amount=10, agent_id="a").balance_after == 290  # no longer in shortfall
    pending = refund_updated_event(
        event_id="evt_pend", payment_intent="pi_b", refund_id="re_2", amount=500, status="pending"
    )
    assert deliver(client, pending).json()["status"] == "ignored"
    assert reconcile() == []


# --- revocable JWTs --------------------------------------------------------------------------------------------


def _log_in(anon, email: str, password: str) -> dict:
    response = anon.post("/auth/token", {"email": email, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _refresh(anon, refresh: str):
    return anon.post("/auth/token/refresh", {"refresh": refresh}, format="json")


@pytest.mark.django_db
def test_refresh_tokens_rotate_and_log_out_revokes_one(anon):
    user = UserFactory(password="correct-horse-9")
    pair = _log_in(anon, user.email, "correct-horse-9")

    rotated = _refresh(anon, pair["refresh"])
    assert rotated.status_code == 200 and rotated.json()["refresh"] != pair["refresh"]
    assert _refresh(anon, pair["refresh"]).status_code == 401  # single use

    assert anon.post("/auth/logout", {"refresh": rotated.json()["refresh"]}, format="json").status_code == 204
    assert _refresh(anon, rotated.json()["refresh"]).status_code == 401
    bad = anon.post("/auth/logout", {"refresh": "not-a-token"}, format="json")
    assert bad.status_code == 400 and "refresh" in bad.json()["errors"]


@pytest.mark.django_db
def test_a_password_change_revokes_every_session(anon):
    user = UserFactory(password="correct-horse-9")
    laptop, phone = _log_in(anon, user.email, "correct-horse-9"), _log_in(anon, user.email, "correct-horse-9")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {laptop['access']}")

    wrong = client.post("/auth/password", {"old_password": "nope", "new_password": "battery-staple-7"}, format="json")
    assert wrong.status_code == 400 and "old_password" in wrong.json()["errors"]
    weak = client.post("/auth/password", {"old_password": "correct-horse-9", "new_password": "123"}, format="json")
    assert weak.status_code == 400 and "new_password" in weak.json()["errors"]
    changed = client.post(
        "/auth/password", {"old_password": "correct-horse-9", "new_password": "battery-staple-7"}, format="json"
    )
    assert changed.status_code == 204

    assert _refresh(anon, laptop["refresh"]).status_code == 401
    assert _refresh(anon, phone["refresh"]).status_code == 401
    assert client.get("/auth/me").status_code == 401  # the old access token died with the password
    fresh = _log_in(anon, user.email, "battery-staple-7")
    assert _refresh(anon, fresh["refresh"]).status_code == 200


@pytest.mark.django_db
def test_refreshing_a_deleted_users_token_is_401_not_500(anon):
    user = UserFactory(password="correct-horse-9")
    pair = _log_in(anon, user.email, "correct-horse-9")
    user.delete()
    response = _refresh(anon, pair["refresh"])
    assert response.status_code == 401


# --- operator mistakes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"STRIPE_WEBHOOK_SECRET": "whsec_abc "}, "billing.E001"),
        ({"STRIPE_API_KEY": "sk_test_abc\n"}, "billing.E001"),
        ({"SECRET_KEY": " long-secret"}, "billing.E001"),
        ({"STRIPE_WEBHOOK_SECRET": "sk_test_abc"}, "billing.E002"),
        ({"STRIPE_API_KEY": "pk_test_abc"}, "billing.E003"),
        ({"STRIPE_API_KEY": "sk_live_abc", "DEBUG": True}, "billing.E004"),
        ({"NUM_PROXIES": 1, "METRICS_TOKEN": ""}, "billing.W001"),
    ],
)
def test_badly_pasted_secrets_stop_the_service_at_start_up(settings, overrides, problem):
    assert not [p for p in run_checks(tags=["secrets"]) if p.is_serious()]  # the test settings are sound
    for name, value in overrides.items():
        setattr(settings, name, value)
    found = [p.id for p in run_checks(tags=["secrets"])]
    assert problem in found


def test_gunicorn_refuses_to_load_the_app_with_a_bad_secret(tmp_path):
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": "whsec_pasted_with_a_space ", "DEBUG": "false"}
    result = subprocess.run(
        [sys.executable, "-c", "import config.wsgi"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "STRIPE_WEBHOOK_SECRET contains whitespace" in result.stderr


@pytest.mark.parametrize("charset", ["rot13", "zlib", "hex"])
def test_a_charset_that_is_no_text_encoding_is_415_even_with_a_query_string(client, charset):
    # Django built the request with it as its encoding and failed before any middleware ran (a 500).
    response = client.get("/api/schema?format=json", CONTENT_TYPE=f"application/json; charset={charset}")
    assert response.status_code == 415
    assert response.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
