"""A webhook storm: 200 deliveries of 20 events in random order from 8 threads at once."""

import random
from collections import Counter

import pytest
from django.test import Client

from billing.models import CreditTransaction, Purchase, StripeWebhookEvent, TransactionKind, Wallet
from billing.packages import get_package
from billing.reconcile import reconcile
from tests.concurrency import in_threads
from tests.factories import UserFactory
from tests.stripe_helpers import checkout_event, dispute_event, refund_event, signed

pytestmark = pytest.mark.django_db(transaction=True)

PACKAGES = ["pack_1k", "pack_5k", "pack_20k"]


def test_200_deliveries_of_20_events_in_random_order_give_exact_totals(figures):
    rng = random.Random(20261125)
    users = [UserFactory() for _ in range(6)]
    sessions = []
    for n in range(10):
        package = get_package(PACKAGES[n % 3])
        sessions.append({"id": f"cs_storm_{n}", "pi": f"pi_storm_{n}", "user": users[n % 6], "package": package})

    events = []
    for n, s in enumerate(sessions):  # 10 completions
        events.append(
            checkout_event(
                event_id=f"evt_c{n}",
                session_id=s["id"],
                user_id=s["user"].id,
                package_id=s["package"].package_id,
                amount_total=s["package"].price_cents,
                payment_intent=s["pi"],
            )
        )
    for n in range(4):  # 4 second events for an already-completed session
        s = sessions[n]
        events.append(
            checkout_event(
                event_id=f"evt_dup{n}",
                session_id=s["id"],
                user_id=s["user"].id,
                package_id=s["package"].package_id,
                amount_total=s["package"].price_cents,
                payment_intent=s["pi"],
                event_type="checkout.session.async_payment_succeeded",
            )
        )
    refunded_cents = {0: 0.5, 1: 1.0, 4: 0.25}  # share of the price refunded (cumulative events)
    events.append(
        refund_event(
            event_id="evt_r0",
            payment_intent="pi_storm_0",
            amount=sessions[0]["package"].price_cents,
            amount_refunded=sessions[0]["package"].price_cents // 4,
        )
    )
    events.append(
        refund_event(
            event_id="evt_r0b",
            payment_intent="pi_storm_0",
            amount=sessions[0]["package"].price_cents,
            amount_refunded=sessions[0]["package"].price_cents // 2,
        )
    )
    events.append(
        refund_event(
            event_id="evt_r1",
            payment_intent="pi_storm_1",
            amount=sessions[1]["package"].price_cents,
            amount_refunded=sessions[1]["package"].price_cents,
        )
    )
    events.append(
        refund_event(
            event_id="evt_r4",
            payment_intent="pi_storm_4",
            amount=sessions[4]["package"].price_cents,
            amount_refunded=sessions[4]["package"].price_cents // 4,
        )
    )
    disputed = {6: 1.0, 7: 0.5}
    events.append(
        dispute_event(event_id="evt_d6", payment_intent="pi_storm_6", amount=sessions[6]["package"].price_cents)
    )
    events.append(
        dispute_event(event_id="evt_d7", payment_intent="pi_storm_7", amount=sessions[7]["package"].price_cents // 2)
    )
    assert len(events) == 20

    deliveries = [event for event in events for _ in range(10)]
    rng.shuffle(deliveries)

    def deliver(event):
        body, header = signed(event)
        return (
            Client()
            .post("/billing/webhook", data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
            .status_code
        )

    statuses = Counter(in_threads(deliveries, deliver, threads=8))

    expected: dict[int, int] = Counter()
    for n, s in enumerate(sessions):
        share = min(1.0, refunded_cents.get(n, 0) + disputed.get(n, 0))
        credits = s["package"].credits
        expected[s["user"].id] += credits - int(credits * share)
    balances = {w.user_id: w.balance_credits for w in Wallet.objects.all()}
    five_xx = sum(n for code, n in statuses.items() if code >= 500)
    drift = reconcile()
    figures(
        f"webhook storm: {len(deliveries)} deliveries of {len(events)} events on 8 threads, "
        f"HTTP {dict(statuses)}, 5xx {five_xx}, invariant violations {len(drift)}"
    )

    assert five_xx == 0
    assert balances == dict(expected)
    assert CreditTransaction.objects.filter(kind=TransactionKind.PURCHASE).count() == 10
    assert Purchase.objects.filter(status="paid").count() == 10
    assert set(StripeWebhookEvent.objects.values_list("status", flat=True)) == {"processed"}
    assert drift == []
