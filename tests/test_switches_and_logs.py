import importlib
import logging

import pytest
from django.urls import clear_url_caches

from billing import ledger
from billing.models import CreditTransaction

pytestmark = pytest.mark.django_db


@pytest.fixture
def billing_disabled(settings):
    import config.urls

    settings.BILLING_ENABLED = False
    clear_url_caches()
    importlib.reload(config.urls)
    yield
    settings.BILLING_ENABLED = True
    clear_url_caches()
    importlib.reload(config.urls)


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/billing/packages"),
        ("get", "/billing/agent-costs"),
        ("get", "/billing/wallet"),
        ("get", "/billing/transactions"),
        ("post", "/billing/admin/grant"),
        ("post", "/billing/admin/seed-costs"),
        ("post", "/billing/admin/settle-shortfall"),
        ("post", "/billing/checkout"),
        ("post", "/billing/webhook"),
    ],
)
def test_with_billing_disabled_the_billing_routes_are_404(billing_disabled, staff_client, method, path):
    response = getattr(staff_client, method)(path)
    assert response.status_code == 404
    assert response.json()["error_code"] == "NOT_FOUND"


def test_with_billing_disabled_the_rest_still_answers(billing_disabled, anon):
    assert anon.get("/health").status_code == 200


def test_the_billing_routes_exist_when_enabled(anon):
    assert anon.get("/billing/packages").status_code == 200


def test_runbook_log_lines(user, caplog, django_capture_on_commit_callbacks):
    with caplog.at_level(logging.INFO, logger="billing"):
        with django_capture_on_commit_callbacks(execute=True):
            ledger.grant(user_id=user.id, amount=30, reason="seed")
        with django_capture_on_commit_callbacks(execute=True):
            ledger.charge(user_id=user.id, amount=25, agent_id="profile-my-data")
        with pytest.raises(ledger.InsufficientCredits):
            ledger.charge(user_id=user.id, amount=25, agent_id="profile-my-data")
    messages = [r.getMessage() for r in caplog.records if r.name == "billing"]
    assert messages == [
        f"[Billing] Granted 30 credits to user {user.id}",
        f"[Billing] Charged 25 credits from user {user.id} for agent profile-my-data",
        f"[Billing] Error: Insufficient credits for user {user.id}",
    ]


def test_no_success_line_is_logged_for_a_rolled_back_charge(user, caplog, django_capture_on_commit_callbacks):
    from django.db import transaction

    ledger.grant(user_id=user.id, amount=30, reason="seed")
    with caplog.at_level(logging.INFO, logger="billing"), django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            ledger.charge(user_id=user.id, amount=25, agent_id="a")
            raise RuntimeError("caller failed after charging")
    assert not [r for r in caplog.records if "Charged" in r.getMessage()]
    assert CreditTransaction.objects.count() == 1
