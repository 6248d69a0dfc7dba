"""The lots migration on a ledger written before lots: every wallet gets an opening lot and the
invariants hold from the first deploy — and the ledger keeps working on it."""

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from billing import ledger
from billing.models import CreditHoldLot, CreditLot, CreditTransaction, Purchase, PurchaseStatus, Wallet
from billing.reconcile import reconcile
from tests.factories import StaffFactory, UserFactory

BEFORE_LOTS = ("billing", "0010_credit_approval_requests")


def _bought(user, credits: int, cents: int, session: str) -> Purchase:
    purchase = Purchase.objects.create(
        user=user,
        package_id="pack",
        credits=credits,
        amount_cents=cents,
        currency="usd",
        status=PurchaseStatus.PAID,
        stripe_checkout_session_id=session,
        stripe_payment_intent_id=f"pi_{session}",
    )
    result = ledger.purchase(
        user_id=user.id,
        amount=credits,
        checkout_session_id=session,
        payment_intent_id=f"pi_{session}",
        stripe_event_id=f"evt_{session}",
        package_id="pack",
    )
    purchase.transaction = result.transaction
    purchase.save(update_fields=["transaction"])
    return purchase


def _migrate(target) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([target])


@pytest.mark.django_db(transaction=True)
def test_every_wallet_gets_an_opening_lot_and_the_ledger_goes_on():
    staff = StaffFactory()
    spender, refunded, empty = UserFactory(), UserFactory(), UserFactory()
    _bought(spender, 1000, 1000, "cs_m1")
    _bought(spender, 5000, 4500, "cs_m2")
    ledger.grant(user_id=spender.id, amount=500, reason="welcome")
    ledger.charge(user_id=spender.id, amount=120, agent_id="a")
    pending = ledger.hold(user_id=spender.id, amount=200, agent_id="a").hold
    captured = ledger.hold(user_id=spender.id, amount=80, agent_id="a").hold
    ledger.capture(hold_id=captured.id, amount=50)
    ledger.adjust(user_id=spender.id, amount=-30, reason="correction")
    ledger.adjust(user_id=spender.id, amount=15, reason="goodwill")
    refund = _bought(refunded, 1000, 1000, "cs_m3")
    ledger.charge(user_id=refunded.id, amount=700, agent_id="a")
    ledger.clawback(
        user_id=refunded.id, amount=1000, reason="refund", idempotency_key="stripe-clawback:e1", purchase_id=refund.id
    )
    ledger.settle_shortfall(user_id=refunded.id, actor_id=staff.id, reason="written off")
    ledger.restore_clawback(
        user_id=refunded.id, amount=100, reason="refund failed", purchase_id=refund.id, idempotency_key="restore:e2"
    )
    ledger.grant(user_id=empty.id, amount=10, reason="x")
    ledger.charge(user_id=empty.id, amount=10, agent_id="a")
    kinds = set(CreditTransaction.objects.values_list("kind", flat=True))
    assert kinds == {"purchase", "grant", "charge", "adjustment", "clawback"}  # every kind a pre-lot ledger has

    try:
        _migrate(BEFORE_LOTS)  # the rows stay; lots, draws and pins are gone
        _migrate(("billing", "0012_opening_lots"))
    finally:
        call_command("migrate", "billing", verbosity=0)

    assert reconcile() == []
    wallets = {w.user_id: w for w in Wallet.objects.all()}
    opening = {lot.wallet.user_id: lot for lot in CreditLot.objects.select_related("wallet")}
    assert set(opening) == {spender.id, refunded.id}  # a wallet without credits needs no lot
    lot = opening[spender.id]
    spender_wallet = wallets[spender.id]
    assert (lot.category, lot.source, lot.expires_at) == ("paid", "opening", None)
    assert (lot.original_credits, lot.remaining_credits) == (spender_wallet.balance_credits,) * 2
    assert lot.held_credits == spender_wallet.held_credits == 200
    assert lot.cost_basis_cents == spender_wallet.balance_credits * 5500 // 6000
    assert list(CreditHoldLot.objects.values_list("hold_id", "credits")) == [(pending.id, 200)]

    # The ledger goes on: the old hold captures from its pinned opening lot, charges and a
    # refund of a purchase from before lots draw in burn order.
    ledger.capture(hold_id=pending.id, amount=150)
    ledger.charge(user_id=spender.id, amount=10, agent_id="a")
    ledger.grant(user_id=spender.id, amount=5, reason="new")
    result = ledger.clawback(
        user_id=spender.id,
        amount=100,
        reason="refund",
        idempotency_key="stripe-clawback:e3",
        purchase_id=Purchase.objects.get(stripe_checkout_session_id="cs_m1").id,
    )
    assert (result.clawed_back, result.shortfall) == (100, 0)
    assert reconcile() == []
