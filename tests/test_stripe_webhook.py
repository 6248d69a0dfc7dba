"""The signed webhook: real signatures, recorded payload shapes, MariaDB, no network."""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection
from django.test import Client

from billing import ledger
from billing.ledger import refunds
from billing.models import (
    CreditShortfall,
    CreditTransaction,
    Purchase,
    PurchaseStatus,
    StripeWebhookEvent,
    TransactionKind,
    Wallet,
    WebhookEventStatus,
)
from tests.stripe_helpers import checkout_event, deliver, dispute_event, refund_event, signed

pytestmark = pytest.mark.django_db


def balance(user) -> int:
    wallet = Wallet.objects.filter(user=user).first()
    return wallet.balance_credits if wallet else 0


def event_status(event_id: str) -> str:
    return StripeWebhookEvent.objects.get(stripe_event_id=event_id).status


@pytest.fixture
def paid(client, user):
    """Deliver one paid checkout for pack_1k (1000 credits, payment intent pi_paid)."""
    event = checkout_event(event_id="evt_paid", session_id="cs_paid", user_id=user.id, payment_intent="pi_paid")
    assert deliver(client, event).status_code == 200
    return event


# --- granting -------------------------------------------------------------------------


def test_a_paid_checkout_grants_the_package_credits_once(client, user, caplog, django_capture_on_commit_callbacks):
    event = checkout_event(event_id="evt_1", session_id="cs_1", user_id=user.id, payment_intent="pi_1")
    with caplog.at_level(logging.INFO, logger="billing"), django_capture_on_commit_callbacks(execute=True):
        response = deliver(client, event)

    assert response.status_code == 200
    assert response.json() == {"received": True, "status": "processed", "duplicate": False}
    assert balance(user) == 1000
    row = CreditTransaction.objects.get()
    assert (row.kind, row.amount, row.stripe_checkout_session_id, row.stripe_payment_intent_id) == (
        TransactionKind.PURCHASE,
        1000,
        "cs_1",
        "pi_1",
    )
    assert row.stripe_event_id == "evt_1"
    purchase = Purchase.objects.get()
    assert (purchase.status, purchase.transaction_id, purchase.created_by_checkout) == (
        PurchaseStatus.PAID,
        row.id,
        False,  # a session we never created (Payment Link) still grants
    )
    stored = StripeWebhookEvent.objects.get()
    assert (stored.type, stored.status, stored.attempts) == ("checkout.session.completed", "processed", 1)
    assert stored.payload == event
    assert "[Billing] Webhook processed: cs_1" in [r.getMessage() for r in caplog.records]


def test_credits_come_from_our_package_table_not_the_payload(client, user):
    event = checkout_event(
        event_id="evt_5k", session_id="cs_5k", user_id=user.id, package_id="pack_5k", amount_total=4500
    )
    event["data"]["object"]["metadata"]["credits"] = "999999"
    deliver(client, event)
    assert balance(user) == 5000


def test_a_session_started_by_our_checkout_grants_its_recorded_package(client, user, fake_stripe):
    from tests.conftest import bearer_client

    started = bearer_client(user).post("/billing/checkout", {"package_id": "pack_20k"}, format="json").json()
    event = checkout_event(
        event_id="evt_ours",
        session_id=started["session_id"],
        user_id=user.id,
        package_id="pack_20k",
        amount_total=16000,
    )
    assert deliver(client, event).json()["status"] == "processed"
    purchase = Purchase.objects.get()
    assert (purchase.status, purchase.created_by_checkout) == (PurchaseStatus.PAID, True)
    assert balance(user) == 20000


@pytest.mark.django_db(transaction=True)
def test_the_same_event_delivered_50_times_and_a_second_event_for_the_session_grant_once(user):
    """50 deliveries of one event, 10 of them at the same moment from threads, then a
    second event id for the same session: exactly one purchase row."""
    event = checkout_event(event_id="evt_storm", session_id="cs_storm", user_id=user.id, payment_intent="pi_storm")
    body, _ = signed(event)

    def deliver_once(_):
        try:
            header = signed(event)[1]
            response = Client().post(
                "/billing/webhook", data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
            )
            return response.status_code, response.json()["duplicate"]
        finally:
            connection.close()

    barrier = threading.Barrier(10)

    def concurrent(i):
        barrier.wait()
        return deliver_once(i)

    with ThreadPoolExecutor(max_workers=10) as pool:
        first_ten = list(pool.map(concurrent, range(10)))
    sequential = [deliver_once(i) for i in range(40)]
    other_event = checkout_event(
        event_id="evt_storm_2", session_id="cs_storm", user_id=user.id, payment_intent="pi_storm"
    )
    second_id = deliver(Client(), other_event)

    results = first_ten + sequential
    assert all(status == 200 for status, _ in results)
    assert sum(1 for _, duplicate in results if not duplicate) == 1
    assert second_id.status_code == 200
    assert CreditTransaction.objects.filter(kind=TransactionKind.PURCHASE).count() == 1
    assert Purchase.objects.count() == 1
    assert balance(user) == 1000
    assert StripeWebhookEvent.objects.count() == 2


# --- signatures ---------------------------------------------------------------------------


def _post_raw(client, body, header=None):
    extra = {"HTTP_STRIPE_SIGNATURE": header} if header is not None else {}
    return client.post("/billing/webhook", data=body, content_type="application/json", **extra)


@pytest.mark.parametrize(
    "case",
    [
        "bad-signature",
        "missing-header",
        "stale-timestamp",
        "tampered-body",
        "wrong-secret",
        "garbage-header",
        "future-proof-not-an-event",
    ],
)
def test_a_webhook_that_does_not_verify_is_400_and_processes_nothing(client, user, case):
    event = checkout_event(event_id="evt_sig", session_id="cs_sig", user_id=user.id)
    body, header = signed(event)
    if case == "bad-signature":
        header = header.rsplit("=", 1)[0] + "=" + "0" * 64
    elif case == "missing-header":
        header = None
    elif case == "stale-timestamp":
        body, header = signed(event, timestamp=int(time.time()) - 301)
    elif case == "tampered-body":
        body = body.replace('"pack_1k"', '"pack_20k"')
    elif case == "wrong-secret":
        body, header = signed(event, secret="whsec_someone_else")
    elif case == "garbage-header":
        header = "not a signature"
    elif case == "future-proof-not-an-event":
        body, header = signed({"hello": "world"})

    response = _post_raw(client, body, header)

    assert response.status_code == 400
    assert response.json()["error_code"] == "WEBHOOK_SIGNATURE_INVALID"
    assert not StripeWebhookEvent.objects.exists()
    assert not CreditTransaction.objects.exists() and balance(user) == 0


def test_the_secret_cannot_be_supplied_by_the_caller(client, user, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    event = checkout_event(event_id="evt_nosecret", session_id="cs_x", user_id=user.id)
    body, header = signed(event, secret="whsec_attacker")
    response = _post_raw(client, body, header)
    assert response.status_code == 400 and balance(user) == 0


# --- rejected events -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"amount_total": 500}, "Amount mismatch"),
        ({"currency": "eur"}, "Amount mismatch"),
        ({"package_id": "pack_nope"}, "No credit package"),
        ({"user_id": 987654, "client_reference_id": None}, "No user"),
        ({"user_id": "abc", "client_reference_id": None}, "not a user id"),
        ({"client_reference_id": "424242"}, "client_reference_id"),
    ],
)
def test_an_event_that_does_not_add_up_grants_nothing_and_is_failed_for_review(client, user, changes, reason):
    kwargs = {"event_id": "evt_bad", "session_id": "cs_bad", "user_id": user.id, **changes}
    response = deliver(client, checkout_event(**kwargs))
    assert response.status_code == 200  # Stripe should not retry; staff review it
    stored = StripeWebhookEvent.objects.get()
    assert stored.status == WebhookEventStatus.FAILED
    assert reason in stored.error
    assert not CreditTransaction.objects.exists() and balance(user) == 0


def test_a_session_without_metadata_is_failed(client, user):
    event = checkout_event(event_id="evt_nometa", session_id="cs_nometa", user_id=user.id)
    event["data"]["object"]["metadata"] = {}
    deliver(client, event)
    assert event_status("evt_nometa") == WebhookEventStatus.FAILED and balance(user) == 0


def test_other_event_types_are_stored_as_ignored(client):
    event = checkout_event(event_id="evt_other", session_id="cs_o", user_id=1)
    event["type"] = "customer.updated"
    response = deliver(client, event)
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert event_status("evt_other") == WebhookEventStatus.IGNORED


def test_a_busy_or_unreachable_database_answers_503_with_nothing_kept(client, user, monkeypatch):
    from django.db import OperationalError

    for error, code in (
        (ledger.LedgerBusy("The wallet is busy; retry the request."), "LEDGER_BUSY"),
        (OperationalError(2013, "Lost connection to server during query"), "LEDGER_BUSY"),
    ):

        def broken(error=error, **kwargs):
            raise error

        monkeypatch.setattr(ledger, "purchase", broken)
        name = f"busy_{error.__class__.__name__}"
        event = checkout_event(event_id=f"evt_{name}", session_id=f"cs_{name}", user_id=user.id)
        response = deliver(client, event)

        assert (response.status_code, response.json()["error_code"]) == (503, code)
        assert event_status(f"evt_{name}") == WebhookEventStatus.FAILED
    assert not CreditTransaction.objects.exists()


def test_a_processing_error_rolls_back_marks_failed_and_answers_500(client, user, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(ledger, "purchase", broken)
    event = checkout_event(event_id="evt_err", session_id="cs_err", user_id=user.id)
    response = deliver(client, event)

    assert response.status_code == 500
    assert response.json()["error_code"] == "WEBHOOK_PROCESSING_FAILED"
    stored = StripeWebhookEvent.objects.get()
    assert stored.status == WebhookEventStatus.FAILED and "database hiccup" in stored.error
    assert not Purchase.objects.exists()  # rolled back with the failed attempt
    assert balance(user) == 0

    monkeypatch.undo()
    retried = deliver(client, event)  # Stripe's retry
    assert retried.status_code == 200 and balance(user) == 1000
    assert StripeWebhookEvent.objects.get().attempts == 2


# --- asynchronous payments ---------------------------------------------------------------------


def test_an_async_payment_is_granted_when_it_succeeds(client, user):
    unpaid = checkout_event(event_id="evt_a1", session_id="cs_async", user_id=user.id, payment_status="unpaid")
    deliver(client, unpaid)
    assert Purchase.objects.get().status == PurchaseStatus.AWAITING_PAYMENT and balance(user) == 0

    succeeded = checkout_event(
        event_id="evt_a2", session_id="cs_async", user_id=user.id, event_type="checkout.session.async_payment_succeeded"
    )
    deliver(client, succeeded)
    assert Purchase.objects.get().status == PurchaseStatus.PAID and balance(user) == 1000


def test_an_async_payment_failure_marks_the_purchase_failed(client, user):
    deliver(client, checkout_event(event_id="evt_f1", session_id="cs_f", user_id=user.id, payment_status="unpaid"))
    failed = checkout_event(
        event_id="evt_f2",
        session_id="cs_f",
        user_id=user.id,
        payment_status="unpaid",
        event_type="checkout.session.async_payment_failed",
    )
    deliver(client, failed)
    purchase = Purchase.objects.get()
    assert purchase.status == PurchaseStatus.FAILED and balance(user) == 0


# --- refunds and disputes --------------------------------------------------------------------


def test_a_full_refund_claws_back_all_credits(client, user, paid):
    response = deliver(client, refund_event(event_id="evt_r", payment_intent="pi_paid", amount_refunded=1000))
    assert response.status_code == 200
    assert balance(user) == 0
    clawback = CreditTransaction.objects.get(kind=TransactionKind.CLAWBACK)
    assert (clawback.amount, clawback.stripe_payment_intent_id) == (-1000, "pi_paid")
    assert Purchase.objects.get().clawed_back_credits == 1000


def test_partial_refunds_claw_back_in_proportion_cumulatively(client, user, paid):
    deliver(client, refund_event(event_id="evt_p1", payment_intent="pi_paid", amount_refunded=250))
    assert balance(user) == 750
    deliver(client, refund_event(event_id="evt_p2", payment_intent="pi_paid", amount_refunded=600))
    assert balance(user) == 400  # 60 % refunded in all → 600 credits back in all
    deliver(client, refund_event(event_id="evt_p3", payment_intent="pi_paid", amount_refunded=600))
    assert balance(user) == 400  # a later event repeating the same total takes nothing more


def test_a_refund_after_spending_claws_back_what_is_available_and_records_the_shortfall(client, user, paid):
    ledger.charge(user_id=user.id, amount=700, agent_id="master-my-data")
    refund = refund_event(event_id="evt_spent", payment_intent="pi_paid", amount_refunded=1000)

    deliver(client, refund)

    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.shortfall_credits) == (0, 700)
    assert CreditTransaction.objects.get(kind=TransactionKind.CLAWBACK).amount == -300
    shortfall = CreditShortfall.objects.get()
    assert (shortfall.amount, shortfall.settled_at) == (700, None)

    # A replayed refund changes nothing.
    again = deliver(client, refund)
    assert again.json()["duplicate"] is True
    wallet.refresh_from_db()
    assert (wallet.balance_credits, wallet.shortfall_credits) == (0, 700)
    assert CreditTransaction.objects.filter(kind=TransactionKind.CLAWBACK).count() == 1

    # The wallet refuses charges (even after a top-up) until staff settle it.
    ledger.grant(user_id=user.id, amount=1000, reason="top-up")
    with pytest.raises(ledger.WalletInShortfall):
        ledger.charge(user_id=user.id, amount=10, agent_id="a")


def test_a_wallet_in_shortfall_gets_402_with_its_own_code_until_settled(
    client, user, staff_client, paid, django_capture_on_commit_callbacks
):
    from prometheus_client import REGISTRY

    from tests.conftest import bearer_client

    ledger.charge(user_id=user.id, amount=700, agent_id="master-my-data")
    deliver(client, refund_event(event_id="evt_sf", payment_intent="pi_paid", amount_refunded=1000))
    ledger.grant(user_id=user.id, amount=500, reason="goodwill")
    body = {"tool_configuration": {}, "data": {"csv": "a\n1\n"}}
    from agents.services import seed_agent_costs

    seed_agent_costs()
    refused = bearer_client(user).post("/api/profile-my-data", body, format="json")
    assert refused.status_code == 402
    assert refused.json()["error_code"] == "BILLING_WALLET_IN_SHORTFALL"
    assert refused.json()["shortfall"] == 700

    def clawed_back() -> float:
        return REGISTRY.get_sample_value("ledger_credits_total", {"kind": "clawback", "agent_id": ""}) or 0.0

    before = clawed_back()
    with django_capture_on_commit_callbacks(execute=True):
        settled = staff_client.post(
            "/billing/admin/settle-shortfall", {"user_id": user.id, "reason": "collected"}, format="json"
        )
    assert settled.status_code == 200
    assert settled.json() == {"collected": 500, "written_off": 200, "still_owed": 0, "new_balance": 0}
    assert clawed_back() == before + 500  # the collected credits are counted like any clawback
    wallet = Wallet.objects.get(user=user)
    assert wallet.shortfall_credits == 0
    assert CreditShortfall.objects.get().written_off_credits == 200

    ledger.grant(user_id=user.id, amount=100, reason="new purchase")
    assert bearer_client(user).post("/api/profile-my-data", body, format="json").status_code == 200


def test_a_dispute_claws_back_the_disputed_share(client, user, paid):
    deliver(client, dispute_event(event_id="evt_d", payment_intent="pi_paid", amount=500))
    assert balance(user) == 500
    assert CreditTransaction.objects.get(kind=TransactionKind.CLAWBACK).amount == -500


def test_a_refund_that_arrives_before_its_checkout_is_applied_when_the_checkout_lands(client, user):
    early = deliver(client, refund_event(event_id="evt_early", payment_intent="pi_late", amount_refunded=1000))
    assert early.status_code == 200
    assert event_status("evt_early") == WebhookEventStatus.FAILED

    deliver(
        client, checkout_event(event_id="evt_late", session_id="cs_late", user_id=user.id, payment_intent="pi_late")
    )

    assert balance(user) == 0
    assert event_status("evt_early") == WebhookEventStatus.PROCESSED
    assert CreditTransaction.objects.filter(kind=TransactionKind.CLAWBACK).count() == 1


def test_a_refund_for_an_unknown_payment_is_kept_failed(client):
    deliver(client, refund_event(event_id="evt_unknown", payment_intent="pi_nobody", amount_refunded=10))
    assert event_status("evt_unknown") == WebhookEventStatus.FAILED


# --- reprocessing ------------------------------------------------------------------------------


def test_reprocess_command_reruns_failed_events_safely(client, user, monkeypatch):
    monkeypatch.setattr(ledger, "purchase", lambda **kw: (_ for _ in ()).throw(RuntimeError("outage")))
    deliver(client, checkout_event(event_id="evt_rp", session_id="cs_rp", user_id=user.id))
    monkeypatch.undo()
    assert event_status("evt_rp") == WebhookEventStatus.FAILED

    out = StringIO()
    call_command("reprocess_webhook_events", "--failed", stdout=out)
    assert "evt_rp: processed" in out.getvalue()
    assert balance(user) == 1000

    call_command("reprocess_webhook_events", "--id", "evt_rp", stdout=out)
    assert "evt_rp: duplicate" in out.getvalue()
    assert balance(user) == 1000

    with pytest.raises(CommandError, match="No stored event"):
        call_command("reprocess_webhook_events", "--id", "evt_missing", stdout=out)
    with pytest.raises(CommandError):
        call_command("reprocess_webhook_events", stdout=out)


def test_reprocess_command_exits_non_zero_while_events_still_fail(client, user):
    deliver(client, checkout_event(event_id="evt_mismatch", session_id="cs_mm", user_id=user.id, amount_total=1))
    with pytest.raises(CommandError, match="still fail"):
        call_command("reprocess_webhook_events", "--failed", stdout=StringIO())
    assert balance(user) == 0


# --- the dj-stripe mirror ----------------------------------------------------------------------


def test_the_mirror_is_refreshed_after_the_grant_and_cannot_undo_it(
    client, user, fake_stripe, django_capture_on_commit_callbacks
):
    from djstripe.models import Customer as MirrorCustomer
    from djstripe.models import PaymentIntent as MirrorPaymentIntent
    from djstripe.models import Session as MirrorSession

    from tests.stripe_helpers import PAYLOADS

    customer = fake_stripe.create("/v1/customers", {"email": user.email, "metadata": {}})
    intent = json.loads((PAYLOADS / "payment_intent.json").read_text())
    intent.update(id="pi_mirror", customer=customer["id"])
    fake_stripe.objects["pi_mirror"] = intent
    event = checkout_event(event_id="evt_mirror", session_id="cs_mirror", user_id=user.id, payment_intent="pi_mirror")
    event["data"]["object"]["customer"] = customer["id"]
    fake_stripe.objects["cs_mirror"] = json.loads(json.dumps(event["data"]["object"]))

    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(client, event).status_code == 200

    assert balance(user) == 1000
    session = MirrorSession.objects.get(id="cs_mirror")
    assert session.customer_id == customer["id"]
    assert MirrorCustomer.objects.filter(id=customer["id"]).exists()
    assert MirrorPaymentIntent.objects.get(id="pi_mirror").stripe_data["amount"] == 1000


def test_with_a_broker_the_mirror_refresh_is_queued_not_run_in_the_webhook(
    client, user, monkeypatch, django_capture_on_commit_callbacks
):
    from billing import stripe_client, tasks

    queued = []
    monkeypatch.setattr(tasks.mirror_stripe_objects_task, "delay", lambda **objects: queued.append(objects))
    monkeypatch.setattr(stripe_client, "mirror_objects", lambda **objects: pytest.fail("refreshed inline"))
    event = checkout_event(event_id="evt_queued", session_id="cs_queued", user_id=user.id)
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(client, event).status_code == 200
    assert balance(user) == 1000
    assert [(objects["customer"], objects["session"]["id"]) for objects in queued] == [(None, "cs_queued")]


def test_when_the_broker_refuses_the_mirror_is_refreshed_inline(
    client, user, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    from billing import stripe_client, tasks

    def broker_down(**objects):
        raise ConnectionError("broker unreachable")

    refreshed = []
    monkeypatch.setattr(tasks.mirror_stripe_objects_task, "delay", broker_down)
    monkeypatch.setattr(stripe_client, "mirror_objects", lambda **objects: refreshed.append(objects["session"]["id"]))
    event = checkout_event(event_id="evt_inline", session_id="cs_inline", user_id=user.id)
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(client, event).status_code == 200
    assert balance(user) == 1000 and refreshed == ["cs_inline"]
    assert "Could not queue the dj-stripe mirror refresh" in caplog.text


def test_a_failing_mirror_does_not_affect_the_grant(client, user, django_capture_on_commit_callbacks):
    # No fake Stripe: the mirror's API calls are refused on the closed port.
    event = checkout_event(event_id="evt_nomirror", session_id="cs_nomirror", user_id=user.id)
    with django_capture_on_commit_callbacks(execute=True):
        response = deliver(client, event)
    assert response.status_code == 200 and balance(user) == 1000


@pytest.mark.django_db(transaction=True)  # the webhook owns its transaction, as in production
def test_a_deadlock_inside_a_ledger_verb_is_retried_by_the_webhook(client, user, paid, monkeypatch):
    # Inside the webhook's transaction the ledger reports a deadlock as LedgerBusy (only the
    # transaction's owner can retry): the webhook owns it and runs the whole event again.
    original, calls = refunds._lock_wallet, []

    def deadlock_once(user_id):
        calls.append(user_id)
        if len(calls) == 1:
            raise OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction")
        return original(user_id)

    monkeypatch.setattr(refunds, "_lock_wallet", deadlock_once)
    response = deliver(client, refund_event(event_id="evt_dl", payment_intent="pi_paid", amount_refunded=1000))

    assert response.status_code == 200 and response.json()["status"] == "processed"
    assert len(calls) == 2 and balance(user) == 0
