"""`billing_doctor`: each fault of the runbook's troubleshooting list, planted, is named."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from agents.models import AgentCost
from billing import ledger
from billing.models import CreditHold, StripeWebhookEvent, Wallet, WebhookEventStatus
from billing.packages import all_packages
from tests.stripe_helpers import checkout_event

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]


def doctor() -> tuple[bool, str]:
    out = StringIO()
    try:
        call_command("billing_doctor", stdout=out)
    except CommandError:
        return False, out.getvalue()
    return True, out.getvalue()


def test_a_sound_installation_is_all_ok():
    healthy, report = doctor()
    assert healthy, report
    assert sum(line.startswith("ok ") for line in report.splitlines()) == 8


def test_no_agent_costs(user):
    AgentCost.objects.update(is_active=False)
    healthy, report = doctor()
    assert not healthy and "seed_agent_costs" in report


def test_a_webhook_secret_pasted_with_a_space(settings):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_abc "
    healthy, report = doctor()
    assert not healthy and "STRIPE_WEBHOOK_SECRET contains whitespace" in report


def test_a_package_without_a_price_id_in_live_mode(settings):
    settings.STRIPE_LIVE_MODE = True
    healthy, report = doctor()
    assert not healthy and "has no Stripe price id in live mode" in report
    assert all_packages()  # the file itself is fine


def test_a_failed_webhook_event_with_its_reason(user):
    event = checkout_event(event_id="evt_x", session_id="cs_x", user_id=user.id)
    event["data"]["object"]["metadata"] = {}
    StripeWebhookEvent.objects.create(
        stripe_event_id="evt_x",
        type=event["type"],
        payload=event,
        status=WebhookEventStatus.FAILED,
        error="The session has no metadata.user_id / metadata.package_id.",
    )
    healthy, report = doctor()
    assert not healthy and "evt_x" in report and "no metadata" in report
    assert "cs_x was paid (event evt_x) but no credits were granted" in report


def test_a_hold_pending_long_past_its_expiry(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=10, agent_id="a").hold
    CreditHold.objects.filter(pk=held.id).update(expires_at=timezone.now() - timedelta(hours=2))
    healthy, report = doctor()
    assert not healthy and "pending past their expiry" in report and "expire_holds" in report


def test_ledger_drift(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    Wallet.objects.filter(user=user).update(balance_credits=101)
    healthy, report = doctor()
    assert not healthy and "Ledger drift" in report and "balance 101" in report
