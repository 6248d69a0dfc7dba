import pytest
from prometheus_client import REGISTRY

from billing import ledger
from tests.stripe_helpers import checkout_event, deliver

pytestmark = pytest.mark.django_db


def value(name, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_are_served_to_allowed_addresses_only(client, settings):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"ledger_credits_total" in response.content and b"stripe_webhook_events_total" in response.content
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    settings.METRICS_TOKEN = "scrape-token"
    assert (
        client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer scrape-token").status_code == 200
    )
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    settings.METRICS_ENABLED = False
    assert client.get("/metrics").status_code == 404


def test_money_movements_refusals_and_latency_are_counted(user, django_capture_on_commit_callbacks):
    charged = value("ledger_credits_total", kind="charge", agent_id="profile-my-data")
    granted = value("ledger_credits_total", kind="grant", agent_id="")
    refusals = value("ledger_insufficient_credit_refusals_total", reason="insufficient_credits")
    timings = value("ledger_charge_seconds_count", verb="charge")
    with django_capture_on_commit_callbacks(execute=True):
        ledger.grant(user_id=user.id, amount=100, reason="seed")
    with django_capture_on_commit_callbacks(execute=True):
        ledger.charge(user_id=user.id, amount=25, agent_id="profile-my-data")
    with pytest.raises(ledger.InsufficientCredits):
        ledger.charge(user_id=user.id, amount=500, agent_id="profile-my-data")

    assert value("ledger_credits_total", kind="charge", agent_id="profile-my-data") == charged + 25
    assert value("ledger_credits_total", kind="grant", agent_id="") == granted + 100
    assert value("ledger_insufficient_credit_refusals_total", reason="insufficient_credits") == refusals + 1
    assert value("ledger_charge_seconds_count", verb="charge") == timings + 2


def test_a_captured_hold_counts_the_credits_it_charged(user, django_capture_on_commit_callbacks):
    charged = value("ledger_credits_total", kind="charge", agent_id="clean-my-data")
    captures = value("ledger_charge_seconds_count", verb="capture")
    with django_capture_on_commit_callbacks(execute=True):
        ledger.grant(user_id=user.id, amount=100, reason="seed")
        held = ledger.hold(user_id=user.id, amount=40, agent_id="clean-my-data").hold
        ledger.capture(hold_id=held.id, amount=30)  # the other 10 are released, not charged
    assert value("ledger_credits_total", kind="charge", agent_id="clean-my-data") == charged + 30
    assert value("ledger_charge_seconds_count", verb="capture") == captures + 1


def test_webhook_events_and_failed_payments_are_counted(client, user, django_capture_on_commit_callbacks):
    processed = value("stripe_webhook_events_total", type="checkout.session.completed", status="processed")
    duplicates = value("stripe_webhook_events_total", type="checkout.session.completed", status="duplicate")
    failed_payments = value("stripe_failed_payments_total")
    event = checkout_event(event_id="evt_m1", session_id="cs_m1", user_id=user.id)
    with django_capture_on_commit_callbacks(execute=True):
        deliver(client, event)
        deliver(client, event)
        deliver(client, checkout_event(event_id="evt_m2", session_id="cs_m2", user_id=user.id, payment_status="unpaid"))
        deliver(
            client,
            checkout_event(
                event_id="evt_m3",
                session_id="cs_m2",
                user_id=user.id,
                payment_status="unpaid",
                event_type="checkout.session.async_payment_failed",
            ),
        )
    assert value("stripe_webhook_events_total", type="checkout.session.completed", status="processed") == processed + 2
    assert value("stripe_webhook_events_total", type="checkout.session.completed", status="duplicate") == duplicates + 1
    assert value("stripe_failed_payments_total") == failed_payments + 1
