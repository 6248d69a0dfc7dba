import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from billing import ledger
from tests.conftest import bearer_client
from tests.stripe_helpers import checkout_event, deliver

ROOT = Path(__file__).resolve().parent.parent


def test_check_deploy_is_clean_with_a_production_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "SESSION_", "CSRF_", "DEBUG"))}
    env.update(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="billing.example.com",
        STRIPE_API_KEY="sk_live_" + "x" * 24,
        STRIPE_WEBHOOK_SECRET="whsec_" + "y" * 32,
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.fixture
def strict_rates(monkeypatch):
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth": "3/min", "grant": "2/min", "agents": "2/min"})
    cache.clear()
    yield
    cache.clear()


@pytest.mark.django_db
def test_auth_endpoints_are_throttled(anon, user, strict_rates):
    body = {"email": user.email, "password": "wrong"}
    codes = [anon.post("/auth/token", body, format="json").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    limited = anon.post("/auth/register", {"email": "x@example.com", "password": "a-long-passphrase"}, format="json")
    assert limited.status_code == 429 and limited.json()["error_code"] == "RATE_LIMITED"


@pytest.mark.django_db
@pytest.mark.usefixtures("agent_costs")
def test_grant_and_agent_endpoints_are_throttled(staff_client, user_client, user, strict_rates):
    grant = {"user_id": user.id, "credits": 5, "reason": "x"}
    assert [staff_client.post("/billing/admin/grant", grant, format="json").status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    holds = [
        user_client.post("/billing/holds", {"agent_id": "profile-my-data"}, format="json").status_code for _ in range(3)
    ]
    assert holds[-1] == 429


def test_jwt_lifetimes_are_short(db, user):
    refresh = RefreshToken.for_user(user)
    access = AccessToken(str(refresh.access_token))
    assert access["exp"] - access["iat"] == 15 * 60
    assert refresh["exp"] - refresh["iat"] == 7 * 24 * 3600


@pytest.mark.django_db
def test_secrets_never_reach_the_logs(
    client, user, staff, settings, caplog, fake_stripe, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    user_client = bearer_client(user)
    access_token = user_client._credentials["HTTP_AUTHORIZATION"].split()[1]
    with django_capture_on_commit_callbacks(execute=True):
        user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json")
        deliver(client, checkout_event(event_id="evt_log", session_id="cs_log", user_id=user.id))
        deliver(client, checkout_event(event_id="evt_bad", session_id="cs_bad", user_id=user.id), secret="whsec_wrong")
        bearer_client(staff).post(
            "/billing/admin/grant", {"user_id": user.id, "credits": 5, "reason": "x"}, format="json"
        )
        ledger.charge(user_id=user.id, amount=10, agent_id="a")
    logged = "\n".join(record.getMessage() + str(record.args) for record in caplog.records)
    assert "[Billing] Webhook processed: cs_log" in logged
    for secret in (settings.STRIPE_API_KEY, settings.STRIPE_WEBHOOK_SECRET, settings.SECRET_KEY, access_token):
        assert secret not in logged
