"""Saved cards, auto-recharge and balance alerts: one recharge and one alert per crossing, credits
only from the signed webhook and only once, failures never grant, three disable, the monthly
limit holds. Real MariaDB, real threads, the fake Stripe on 127.0.0.1, signed events."""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core import mail
from django.db import connection, transaction
from django.test import Client
from djstripe import models as djstripe_models

from billing import auto_recharge, ledger, notifications
from billing.models import (
    AutoRecharge,
    CreditTransaction,
    OutboxEvent,
    Purchase,
    PurchaseStatus,
    RechargeAttempt,
    RechargeStatus,
    SavedPaymentMethod,
    TransactionKind,
    Wallet,
)
from billing.reconcile import reconcile
from billing.signals import recharge_started
from tests.concurrency import in_threads
from tests.conftest import bearer_client
from tests.factories import UserFactory
from tests.stripe_helpers import deliver, payment_intent_event, setup_intent_event

# Committed transactions: an attempt is started (and a card mirrored) only after its commit.
pytestmark = pytest.mark.django_db(transaction=True)

PACK = {"package_id": "pack_1k", "credits": 1000, "price_cents": 1000}


def with_card(user, payment_method="pm_card_visa", fake=None):
    user.stripe_customer_id = f"cus_for_{user.id}"
    user.save(update_fields=["stripe_customer_id"])
    if fake is not None:
        fake.objects[user.stripe_customer_id] = {"id": user.stripe_customer_id, "object": "customer", "metadata": {}}
        fake.payment_method(payment_method, user.stripe_customer_id)
    return SavedPaymentMethod.objects.create(
        user=user,
        stripe_payment_method_id=payment_method,
        stripe_customer_id=user.stripe_customer_id,
        saved_at="2026-12-01T00:00:00Z",
    )


def enable(user, *, threshold=500, limit_cents=10_000):
    return auto_recharge.configure(
        user_id=user.id,
        enabled=True,
        threshold_credits=threshold,
        package_id="pack_1k",
        monthly_limit_cents=limit_cents,
    )


def events_of(user, event_type):
    return list(OutboxEvent.objects.filter(user=user, type=event_type).order_by("id"))


def available(user) -> int:
    wallet = Wallet.objects.get(user=user)
    return wallet.balance_credits - wallet.held_credits


def crossed_with_task_not_run(user):
    """Fund 600, turn auto-recharge on (threshold 500) and charge 200: the crossing's attempt,
    recorded but not yet started (its task has not run)."""
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    recharge_started.disconnect(auto_recharge._queue_start)
    try:
        enable(user)
        ledger.charge(user_id=user.id, amount=200, agent_id="a")
    finally:
        recharge_started.connect(auto_recharge._queue_start)
    return RechargeAttempt.objects.get(user=user)


def succeed_webhook(client, fake, attempt, event_id):
    intent = fake.objects[attempt.stripe_payment_intent_id]
    return deliver(client, payment_intent_event(event_id=event_id, intent=intent))


# --- balance alerts ------------------------------------------------------------------------


def test_balance_events_come_once_per_crossing(settings):
    settings.BALANCE_LOW_THRESHOLD_CREDITS = 100
    user = UserFactory()
    ledger.grant(user_id=user.id, amount=300, reason="funds")
    for _ in range(3):
        ledger.charge(user_id=user.id, amount=60, agent_id="a")  # 240, 180, 120: above 100
    assert events_of(user, "balance.low") == []
    ledger.charge(user_id=user.id, amount=60, agent_id="a")  # 60: crossed
    ledger.charge(user_id=user.id, amount=10, agent_id="a")  # 50: still low, no second event
    (low,) = events_of(user, "balance.low")
    assert low.payload == {"user_id": user.id, "available_credits": 60, "balance_credits": 60, "threshold_credits": 100}
    assert low.email_pending
    hold = ledger.hold(user_id=user.id, amount=50, agent_id="a")  # available 0: depleted (a hold counts)
    assert len(events_of(user, "balance.depleted")) == 1
    ledger.release(hold_id=hold.hold.id)  # back to 50: below 100, not recovered
    assert events_of(user, "balance.recovered") == []
    ledger.grant(user_id=user.id, amount=100, reason="top-up")  # 150: recovered
    assert len(events_of(user, "balance.recovered")) == 1
    ledger.charge(user_id=user.id, amount=100, agent_id="a")  # 50: a new crossing, a new event
    assert len(events_of(user, "balance.low")) == 2
    assert [e.type for e in OutboxEvent.objects.filter(user=user).order_by("id")] == [
        "balance.low",
        "balance.depleted",
        "balance.recovered",
        "balance.low",
    ]
    assert Wallet.objects.get(user=user).balance_alert_state == 1


def test_a_rolled_back_crossing_leaves_no_event_and_no_attempt(fake_stripe):
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user)
    with pytest.raises(RuntimeError), transaction.atomic():
        ledger.charge(user_id=user.id, amount=590, agent_id="a")
        assert RechargeAttempt.objects.filter(user=user).count() == 1  # inside: recorded
        raise RuntimeError("the caller's transaction fails")
    assert OutboxEvent.objects.filter(user=user).count() == 0
    assert RechargeAttempt.objects.filter(user=user).count() == 0
    assert fake_stripe.requests_to("POST", "/v1/payment_intents") == []


def test_own_threshold_through_the_api_and_the_low_balance_email(settings):
    settings.BALANCE_LOW_THRESHOLD_CREDITS = 100
    user = UserFactory()
    client = bearer_client(user)
    ledger.grant(user_id=user.id, amount=1000, reason="funds")
    assert bearer_client(UserFactory()).get("/billing/balance-alerts").json()["state"] == "depleted"  # no credits
    assert client.get("/billing/balance-alerts").json() == {
        "low_balance_threshold_credits": None,
        "default_threshold_credits": 100,
        "threshold_credits": 100,
        "state": "ok",
    }
    bad = client.put("/billing/balance-alerts", {"low_balance_threshold_credits": -1}, format="json")
    assert bad.status_code == 400 and "low_balance_threshold_credits" in bad.json()["errors"]
    # Raising the threshold above what is available alerts at once.
    answer = client.put("/billing/balance-alerts", {"low_balance_threshold_credits": 2000}, format="json")
    assert answer.json()["state"] == "low"
    assert len(events_of(user, "balance.low")) == 1
    mail.outbox.clear()
    assert notifications.send_due() == 1
    assert notifications.send_due() == 0  # sent once
    (message,) = mail.outbox
    assert message.to == [user.email] and "1000 credits available" in message.body


# --- the crossing under concurrency ----------------------------------------------------------


@pytest.mark.parametrize("card", ["pm_card_visa", "pm_card_chargeDeclined"])
def test_50_concurrent_charges_crossing_together_start_one_recharge_and_one_low_alert(fake_stripe, settings, card):
    """With a card that pays and one that declines (its failure is recorded while the other
    charges still run: one lock order, no deadlock)."""
    settings.BALANCE_LOW_THRESHOLD_CREDITS = 500
    user = UserFactory()
    with_card(user, payment_method=card, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=1000, reason="funds")
    enable(user, threshold=500)

    def work(_):
        try:
            ledger.charge(user_id=user.id, amount=20, agent_id="a")
            return "charged"
        except ledger.InsufficientCredits:
            return "refused"

    outcomes = Counter(in_threads(list(range(50)), work, threads=16))
    assert outcomes == {"charged": 50}
    assert available(user) == 0
    assert len(events_of(user, "balance.low")) == 1
    assert len(events_of(user, "balance.depleted")) == 1
    (attempt,) = RechargeAttempt.objects.filter(user=user)
    assert len(fake_stripe.requests_to("POST", "/v1/payment_intents")) == 1
    expected = RechargeStatus.PROCESSING if card == "pm_card_visa" else RechargeStatus.FAILED
    assert attempt.status == expected and attempt.available_credits < 500
    assert AutoRecharge.objects.get(user=user).failures_in_row == (card != "pm_card_visa")
    assert reconcile() == []


# --- the webhook grants, once -----------------------------------------------------------------


def test_success_grants_once_however_the_webhook_arrives(fake_stripe):
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user)
    ledger.charge(user_id=user.id, amount=200, agent_id="a")  # 400 < 500: one attempt, paid at Stripe
    attempt = RechargeAttempt.objects.get(user=user)
    (request,) = fake_stripe.requests_to("POST", "/v1/payment_intents")
    assert request.headers["Idempotency-Key"] == f"auto-recharge-{attempt.pk}"
    assert request.params["off_session"] == "true" and request.params["amount"] == "1000"
    event = payment_intent_event(event_id="evt_ar_ok", intent=fake_stripe.objects[attempt.stripe_payment_intent_id])
    barrier = threading.Barrier(8)

    def concurrently(_):
        try:
            barrier.wait()
            return deliver(Client(), event).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(concurrently, range(8))) == [200] * 8
    again = payment_intent_event(event_id="evt_ar_ok_2", intent=fake_stripe.objects[attempt.stripe_payment_intent_id])
    assert deliver(Client(), again).status_code == 200  # a second event for the same payment
    failed_late = payment_intent_event(
        event_id="evt_ar_late_fail",
        intent=fake_stripe.objects[attempt.stripe_payment_intent_id],
        event_type="payment_intent.payment_failed",
    )
    assert deliver(Client(), failed_late).status_code == 200  # out of order: changes nothing
    attempt.refresh_from_db()
    assert attempt.status == RechargeStatus.SUCCEEDED
    assert (attempt.charged_cents, attempt.credited_credits) == (1000, 1000)
    assert CreditTransaction.objects.filter(wallet__user=user, kind=TransactionKind.PURCHASE).count() == 1
    assert available(user) == 1400
    purchase = Purchase.objects.get(user=user)
    assert (purchase.status, purchase.stripe_payment_intent_id) == (
        PurchaseStatus.PAID,
        attempt.stripe_payment_intent_id,
    )
    assert len(events_of(user, "auto_recharge.succeeded")) == 1
    assert len(events_of(user, "purchase.completed")) == 1
    assert auto_recharge.start(attempt.pk) == RechargeStatus.SUCCEEDED  # a late task: nothing asked again
    assert len(fake_stripe.requests_to("POST", "/v1/payment_intents")) == 1
    assert reconcile() == []


def test_the_webhook_before_the_stripe_answer_is_recorded_still_grants_once(client, fake_stripe):
    """Stripe's event may arrive before the task records the PaymentIntent id."""
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    attempt = crossed_with_task_not_run(user)
    assert attempt.status == RechargeStatus.PENDING
    assert auto_recharge._claim(attempt.pk) is not None  # the task claimed it, Stripe is being asked
    intent = fake_stripe.create(
        "/v1/payment_intents",
        {
            "amount": "1000",
            "currency": "usd",
            "customer": user.stripe_customer_id,
            "payment_method": "pm_card_visa",
            "metadata": {"auto_recharge_attempt_id": str(attempt.pk)},
        },
    )
    assert deliver(client, payment_intent_event(event_id="evt_early", intent=intent)).status_code == 200
    assert available(user) == 1400
    assert auto_recharge.start(attempt.pk) == RechargeStatus.SUCCEEDED  # the task's answer comes after
    assert available(user) == 1400


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"amount_received": 1}, "Amount mismatch"), ({"customer": "cus_someone_else"}, "customer")],
)
def test_a_payment_that_does_not_match_its_attempt_grants_nothing(client, fake_stripe, change, reason):
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user)
    ledger.charge(user_id=user.id, amount=200, agent_id="a")
    attempt = RechargeAttempt.objects.get(user=user)
    intent = {**fake_stripe.objects[attempt.stripe_payment_intent_id], **change}
    assert deliver(client, payment_intent_event(event_id="evt_bad", intent=intent)).json()["status"] == "failed"
    assert available(user) == 400
    assert RechargeAttempt.objects.get(pk=attempt.pk).status == RechargeStatus.PROCESSING


def test_a_checkout_payment_intent_is_not_an_auto_recharge(client, user):
    intent = {"id": "pi_checkout", "object": "payment_intent", "amount": 1000, "currency": "usd", "metadata": {}}
    assert deliver(client, payment_intent_event(event_id="evt_co", intent=intent)).json()["status"] == "ignored"


# --- failures, the limit, in flight -----------------------------------------------------------


def cross(user):
    """Top the wallet up to 600 (above the threshold of 500, re-arming it) if it is below, then
    charge it down to 400."""
    if available(user) < 600:
        ledger.grant(user_id=user.id, amount=600 - available(user), reason="back above the threshold")
    ledger.charge(user_id=user.id, amount=available(user) - 400, agent_id="a")


def test_failures_never_grant_and_three_in_a_row_turn_it_off(client, fake_stripe):
    user = UserFactory()
    with_card(user, payment_method="pm_card_chargeDeclined", fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user)
    mail.outbox.clear()
    for number in (1, 2, 3):
        cross(user)
        attempt = RechargeAttempt.objects.filter(user=user).first()
        assert (attempt.status, attempt.failure_code) == (RechargeStatus.FAILED, "card_declined")
        assert AutoRecharge.objects.get(user=user).failures_in_row == number
        # Stripe's own failure event for the same payment is not a second failure.
        late = payment_intent_event(
            event_id=f"evt_fail_{number}",
            intent=fake_stripe.objects[attempt.stripe_payment_intent_id],
            event_type="payment_intent.payment_failed",
        )
        assert deliver(client, late).status_code == 200
        assert AutoRecharge.objects.get(user=user).failures_in_row == number
    assert CreditTransaction.objects.filter(wallet__user=user, kind=TransactionKind.PURCHASE).count() == 0
    settings_row = AutoRecharge.objects.get(user=user)
    assert not settings_row.enabled and "3 auto-recharges failed" in settings_row.disabled_reason
    assert Wallet.objects.get(user=user).recharge_threshold_credits is None
    assert len(events_of(user, "auto_recharge.failed")) == 3
    assert len(events_of(user, "auto_recharge.disabled")) == 1
    cross(user)  # off: no fourth attempt
    assert RechargeAttempt.objects.filter(user=user).count() == 3
    notifications.send_due()
    subjects = Counter(message.subject for message in mail.outbox)
    assert subjects["Your auto-recharge failed"] == 3 and subjects["Auto-recharge is turned off"] == 1
    assert reconcile() == []


def test_requires_action_is_a_failure_and_a_later_success_resets_the_count(client, fake_stripe):
    user = UserFactory()
    with_card(user, payment_method="pm_card_authenticationRequired", fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user)
    cross(user)
    assert RechargeAttempt.objects.get(user=user).failure_code == "authentication_required"
    SavedPaymentMethod.objects.filter(user=user).update(stripe_payment_method_id="pm_card_visa")
    fake_stripe.payment_method("pm_card_visa", user.stripe_customer_id)
    cross(user)
    attempt = RechargeAttempt.objects.filter(user=user).first()
    assert succeed_webhook(client, fake_stripe, attempt, "evt_after_fail").status_code == 200
    assert AutoRecharge.objects.get(user=user).failures_in_row == 0


def test_the_monthly_limit_counts_attempts_in_flight_and_is_never_exceeded(client, fake_stripe):
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user, limit_cents=2500)  # two recharges of 1000 fit, a third does not
    cross(user)
    first = RechargeAttempt.objects.get(user=user)
    assert first.status == RechargeStatus.PROCESSING  # in flight (no webhook yet)
    # Back above the threshold by a grant and down again while the first is in flight: no second.
    cross(user)
    assert RechargeAttempt.objects.filter(user=user).count() == 1
    succeed_webhook(client, fake_stripe, first, "evt_m1")
    cross(user)
    second = RechargeAttempt.objects.filter(user=user).first()
    assert second.pk != first.pk and second.status == RechargeStatus.PROCESSING
    succeed_webhook(client, fake_stripe, second, "evt_m2")
    cross(user)
    third = RechargeAttempt.objects.filter(user=user).first()
    assert third.status == RechargeStatus.SKIPPED and "limit" in third.failure_reason
    assert len(fake_stripe.requests_to("POST", "/v1/payment_intents")) == 2
    assert auto_recharge.month_spent_cents(user.id) == 2000 <= 2500


# --- saved card and settings over HTTP ---------------------------------------------------------


def test_saving_a_card_through_checkout_setup_and_removing_it(client, fake_stripe):
    user = UserFactory()
    api = bearer_client(user)
    started = api.post("/billing/payment-method/setup")
    assert started.status_code == 201 and started.json()["checkout_url"].startswith("https://checkout.stripe.com/")
    (request,) = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    assert request.params["mode"] == "setup"
    assert request.params["setup_intent_data"]["metadata"] == {"user_id": str(user.id), "purpose": "auto_recharge_card"}
    user.refresh_from_db()
    assert api.get("/billing/payment-method").status_code == 404
    fake_stripe.payment_method("pm_saved", user.stripe_customer_id)
    saved = setup_intent_event(
        event_id="evt_seti", user_id=user.id, customer=user.stripe_customer_id, payment_method="pm_saved"
    )
    assert deliver(client, saved).json()["status"] == "processed"
    card = api.get("/billing/payment-method").json()
    assert (card["payment_method_id"], card["brand"], card["last4"]) == ("pm_saved", "visa", "4242")
    # Mirrored by dj-stripe, and made the customer's default at Stripe.
    assert djstripe_models.PaymentMethod.objects.filter(id="pm_saved").exists()
    (default,) = fake_stripe.requests_to("POST", f"/v1/customers/{user.stripe_customer_id}")
    assert default.params["invoice_settings"] == {"default_payment_method": "pm_saved"}
    # An older event arriving late does not replace the newer card.
    older = setup_intent_event(
        event_id="evt_seti_old", user_id=user.id, customer=user.stripe_customer_id, payment_method="pm_old", created=1
    )
    deliver(client, older)
    assert api.get("/billing/payment-method").json()["payment_method_id"] == "pm_saved"
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    assert api.put(
        "/billing/auto-recharge",
        {"enabled": True, "threshold_credits": 100, "package_id": "pack_1k", "monthly_limit_cents": 5000},
        format="json",
    ).json()["enabled"]
    assert api.delete("/billing/payment-method").status_code == 204
    assert fake_stripe.requests_to("POST", "/v1/payment_methods/pm_saved/detach")
    assert api.get("/billing/payment-method").status_code == 404
    summary = api.get("/billing/auto-recharge").json()
    assert (summary["enabled"], summary["disabled_reason"]) == (False, "The saved card was removed.")
    assert len(events_of(user, "auto_recharge.disabled")) == 1


def test_a_setup_event_for_someone_elses_customer_saves_nothing(client):
    user, other = UserFactory(), UserFactory(stripe_customer_id="cus_other")
    forged = setup_intent_event(event_id="evt_forge", user_id=user.id, customer="cus_other", payment_method="pm_x")
    assert deliver(client, forged).json()["status"] == "failed"
    assert not SavedPaymentMethod.objects.exists()
    assert other.id


def test_auto_recharge_settings_are_validated(fake_stripe):
    user = UserFactory()
    api = bearer_client(user)
    body = {"enabled": True, "threshold_credits": 100, "package_id": "pack_1k", "monthly_limit_cents": 5000}
    refused = api.put("/billing/auto-recharge", body, format="json")
    assert (refused.status_code, refused.json()["error_code"]) == (409, "PAYMENT_METHOD_REQUIRED")
    for change, field in (
        ({"package_id": "nope"}, "package_id"),
        ({"monthly_limit_cents": 999}, "monthly_limit_cents"),
        ({"threshold_credits": 0}, "threshold_credits"),
        ({"threshold_credits": "100"}, "threshold_credits"),
        ({"enabled": None}, "enabled"),
    ):
        answer = api.put("/billing/auto-recharge", {**body, **change}, format="json")
        assert answer.status_code == 400 and field in answer.json()["errors"], (change, answer.json())
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=1000, reason="above the threshold: nothing to recharge yet")
    assert api.put("/billing/auto-recharge", body, format="json").json() == {
        **body,
        "spent_this_month_cents": 0,
        "failures_in_row": 0,
        "disabled_reason": "",
        "has_payment_method": True,
    }


def test_enabling_below_the_threshold_recharges_at_once(fake_stripe):
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=50, reason="funds")
    enable(user, threshold=100)
    assert RechargeAttempt.objects.get(user=user).status == RechargeStatus.PROCESSING


def test_a_charge_that_crosses_nothing_sends_one_statement_and_one_that_crosses_three(settings):
    """The follow-up (events, the attempt) is sent only when something was crossed."""
    settings.BALANCE_LOW_THRESHOLD_CREDITS = 100
    user = UserFactory()
    ledger.grant(user_id=user.id, amount=300, reason="funds")

    def statements_for(amount):
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            before = int(cursor.fetchone()[1])
            ledger.charge(user_id=user.id, amount=amount, agent_id="a")
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1]) - before - 1

    assert statements_for(100) == 1  # 200 left: nothing crossed
    assert statements_for(150) == 3  # 50 left: the plan, the follow-up (balance.low), COMMIT
    assert len(events_of(user, "balance.low")) == 1
    assert statements_for(10) == 1  # still low: nothing new crossed


# --- what the adversarial review found ---------------------------------------------------------


def test_a_claw_back_of_a_recharge_does_not_start_another(client, fake_stripe):
    """Only usage (charges, holds) starts a recharge: a refund taking the wallet back below the
    threshold must not charge the card again at once."""
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user)
    cross(user)
    succeed_webhook(client, fake_stripe, RechargeAttempt.objects.get(user=user), "evt_cb_ok")
    ledger.clawback(user_id=user.id, amount=1000, reason="refunded", idempotency_key="refund-recharge")
    assert available(user) == 400
    assert RechargeAttempt.objects.filter(user=user).count() == 1
    ledger.charge(user_id=user.id, amount=1, agent_id="a")  # the next usage does (still armed)
    assert RechargeAttempt.objects.filter(user=user).count() == 2


def test_saving_the_same_settings_again_below_the_threshold_does_not_recharge_again(fake_stripe):
    user = UserFactory()
    with_card(user, payment_method="pm_card_chargeDeclined", fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=50, reason="funds")
    enable(user, threshold=100)  # below at once: one attempt (declined)
    enable(user, threshold=100)  # the same again: nothing
    assert RechargeAttempt.objects.filter(user=user).count() == 1
    enable(user, threshold=200)  # a new threshold is a new crossing
    assert RechargeAttempt.objects.filter(user=user).count() == 2


def test_an_attempt_is_asked_of_stripe_by_one_asker_at_a_time(fake_stripe, settings):
    settings.AUTO_RECHARGE_RETRY_SECONDS = 300
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    attempt = crossed_with_task_not_run(user)
    claimed = auto_recharge._claim(attempt.pk)  # the task: claimed, Stripe not answered yet
    assert claimed is not None
    assert auto_recharge._claim(attempt.pk) is None  # the sweep meanwhile: within the lease, nothing
    assert auto_recharge.retry_stalled() == 0
    assert fake_stripe.requests_to("POST", "/v1/payment_intents") == []
    settings.AUTO_RECHARGE_RETRY_SECONDS = 0  # the lease is over: asked again, same key
    assert auto_recharge.retry_stalled() == 1
    (request,) = fake_stripe.requests_to("POST", "/v1/payment_intents")
    assert request.headers["Idempotency-Key"] == f"auto-recharge-{attempt.pk}"


def test_a_second_payment_for_one_attempt_is_never_granted(client, fake_stripe):
    user = UserFactory()
    with_card(user, fake=fake_stripe)
    ledger.grant(user_id=user.id, amount=600, reason="funds")
    enable(user)
    cross(user)
    attempt = RechargeAttempt.objects.get(user=user)
    succeed_webhook(client, fake_stripe, attempt, "evt_first")
    other = {**fake_stripe.objects[attempt.stripe_payment_intent_id], "id": "pi_second_payment"}
    answer = deliver(client, payment_intent_event(event_id="evt_second", intent=other)).json()
    assert answer["status"] == "failed"
    assert available(user) == 1400


def test_a_removed_card_is_not_brought_back_by_a_late_event(client, fake_stripe):
    user = UserFactory()
    api = bearer_client(user)
    api.post("/billing/payment-method/setup")
    user.refresh_from_db()
    fake_stripe.payment_method("pm_late", user.stripe_customer_id)
    saved = setup_intent_event(
        event_id="evt_late_1", user_id=user.id, customer=user.stripe_customer_id, payment_method="pm_late"
    )
    deliver(client, saved)
    assert api.delete("/billing/payment-method").status_code == 204
    redelivered = setup_intent_event(
        event_id="evt_late_2",
        user_id=user.id,
        customer=user.stripe_customer_id,
        payment_method="pm_late",
        created=saved["created"] - 1,
    )
    deliver(client, redelivered)
    assert api.get("/billing/payment-method").status_code == 404
