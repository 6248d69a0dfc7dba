from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from billing import ledger
from billing.models import Purchase
from billing.reconcile import reconcile
from tests.stripe_helpers import checkout_event, deliver, refund_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def busy_ledger(client, user, other_user):
    """A realistic, consistent ledger: grants, charges, holds, a purchase, a refund with shortfall."""
    ledger.grant(user_id=user.id, amount=500, reason="seed")
    ledger.charge(user_id=user.id, amount=120, agent_id="master-my-data")
    ledger.hold(user_id=user.id, amount=50, agent_id="clean-my-data")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="clean-my-data").hold
    ledger.capture(hold_id=held.id)
    deliver(
        client, checkout_event(event_id="evt_r1", session_id="cs_r1", user_id=other_user.id, payment_intent="pi_r1")
    )
    ledger.charge(user_id=other_user.id, amount=900, agent_id="govern-my-data")
    deliver(client, refund_event(event_id="evt_r2", payment_intent="pi_r1", amount_refunded=500))
    return user, other_user


def run(*args) -> str:
    out = StringIO()
    call_command("reconcile_ledger", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_a_sound_ledger_reconciles(busy_ledger):
    assert reconcile() == []
    assert "no drift" in run()


def _corrupt(sql: str, params) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.parametrize(
    "corruption, check",
    [
        ("UPDATE credit_wallets SET balance_credits = balance_credits + 7 WHERE user_id = %s", "balance"),
        ("UPDATE credit_wallets SET held_credits = held_credits - 10 WHERE user_id = %s", "held"),
        ("UPDATE credit_wallets SET shortfall_credits = shortfall_credits + 1 WHERE user_id = %s", "shortfall"),
        (
            "INSERT INTO credit_transactions (wallet_id, kind, amount, balance_after, reason, request_fingerprint, "
            "metadata, created_at) SELECT id, 'grant', 5, balance_credits + 6, 'forged', '', '{}', NOW() "
            "FROM credit_wallets WHERE user_id = %s",
            "chain",
        ),
    ],
    ids=["balance", "held", "shortfall", "chain"],
)
def test_a_corrupted_copy_fails_reconciliation(busy_ledger, corruption, check):
    user, _ = busy_ledger
    _corrupt(corruption, [user.id])
    drift = reconcile()
    assert check in {d.check for d in drift}, drift
    with pytest.raises(CommandError, match="Ledger drift"):
        run()


def test_a_paid_purchase_without_its_row_and_a_missed_clawback_are_found(busy_ledger):
    Purchase.objects.filter(stripe_checkout_session_id="cs_r1").update(refunded_cents=1000)
    assert {d.check for d in reconcile()} == {"clawback"}
    _corrupt("UPDATE credit_purchases SET transaction_id = NULL WHERE stripe_checkout_session_id = %s", ["cs_r1"])
    assert "purchase" in {d.check for d in reconcile()}


def test_reconcile_changes_nothing(busy_ledger):
    _corrupt("UPDATE credit_wallets SET balance_credits = balance_credits + 7 WHERE user_id = %s", [busy_ledger[0].id])
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, balance_credits, held_credits FROM credit_wallets ORDER BY id")
        before = cursor.fetchall()
        reconcile()
        cursor.execute("SELECT id, balance_credits, held_credits FROM credit_wallets ORDER BY id")
        assert cursor.fetchall() == before
