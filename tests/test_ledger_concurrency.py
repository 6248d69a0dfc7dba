"""Many threads, one wallet, real MariaDB row locks.

Checked by hand against naive ledgers: with the wallet read without `select_for_update` (and
the in-place debit switched off), 200 of 200 charges "succeed" on a wallet funded for 50 and
grants lose updates (1,569 of 20,100 credits kept); with the in-place debit's balance condition
removed, the database's CHECK constraint refuses the overdraft and the charge test fails.
"""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from billing import ledger
from billing.expiry import expire_due_credits
from billing.models import CreditLot, CreditTransaction, TransactionKind, Wallet
from billing.reconcile import reconcile
from tests.concurrency import in_threads

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 16


def _ledger_sum(wallet: Wallet) -> int:
    return sum(CreditTransaction.objects.filter(wallet=wallet).values_list("amount", flat=True))


def test_concurrent_charges_never_overspend(user, figures):
    n_charges, cost = 50, 7
    ledger.grant(user_id=user.id, amount=n_charges * cost, reason="exactly N charges")

    def charge(_):
        try:
            ledger.charge(user_id=user.id, amount=cost, agent_id="profile-my-data")
            return "ok"
        except ledger.InsufficientCredits:
            return "402"

    outcomes = Counter(in_threads(list(range(4 * n_charges)), charge))

    wallet = Wallet.objects.get(user=user)
    figures(f"4N={4 * n_charges} concurrent charges on {THREADS} threads: {dict(outcomes)}")
    assert outcomes == {"ok": n_charges, "402": 3 * n_charges}
    assert wallet.balance_credits == 0
    assert wallet.balance_credits == _ledger_sum(wallet)
    assert CreditTransaction.objects.filter(wallet=wallet, kind=TransactionKind.CHARGE).count() == n_charges


def test_concurrent_grants_lose_no_update(user):
    grants = list(range(1, 201))  # 200 grants of different sizes

    in_threads(grants, lambda amount: ledger.grant(user_id=user.id, amount=amount, reason="load"))

    wallet = Wallet.objects.get(user=user)
    assert wallet.balance_credits == sum(grants)
    assert wallet.balance_credits == _ledger_sum(wallet)
    chain = sorted(CreditTransaction.objects.filter(wallet=wallet).values_list("balance_after", flat=True))
    assert len(set(chain)) == len(grants)  # every row saw its own, distinct balance


def test_concurrent_first_use_creates_one_wallet(user):
    in_threads(list(range(THREADS)), lambda _: ledger.grant(user_id=user.id, amount=1, reason="first"))
    assert Wallet.objects.filter(user=user).count() == 1
    assert Wallet.objects.get(user=user).balance_credits == THREADS


def test_concurrent_replays_of_one_key_move_credits_once(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")

    def replay(_):
        return ledger.charge(user_id=user.id, amount=10, agent_id="a", idempotency_key="same-key").transaction.id

    ids = set(in_threads(list(range(64)), replay))

    assert len(ids) == 1
    assert Wallet.objects.get(user=user).balance_credits == 90


def test_concurrent_holds_and_captures_never_overspend(user):
    ledger.grant(user_id=user.id, amount=300, reason="seed")

    def run(_):
        try:
            held = ledger.hold(user_id=user.id, amount=20, agent_id="a").hold
        except ledger.InsufficientCredits:
            return "402"
        ledger.capture(hold_id=held.id)
        return "ok"

    outcomes = Counter(in_threads(list(range(60)), run))

    wallet = Wallet.objects.get(user=user)
    assert outcomes == {"ok": 15, "402": 45}
    assert (wallet.balance_credits, wallet.held_credits) == (0, 0)
    assert wallet.balance_credits == _ledger_sum(wallet)


def test_many_lots_on_one_wallet_stay_exact_under_concurrent_charges_holds_and_expiry(user, figures):
    """20 lots of every kind on one wallet; charges, holds with captures or releases and expiry
    sweeps all at once: nothing overspent, every lot's draws and pins add up, expiry once."""
    soon = timezone.now() + timedelta(days=1)
    for n in range(20):
        ledger.grant(
            user_id=user.id,
            amount=40 + n,
            reason="lot",
            category=("paid", "promotional")[n % 2],
            expires_at=soon + timedelta(hours=n) if n % 3 else None,
            priority=n % 4 - 1,
        )
    funded = sum(40 + n for n in range(20))  # 990
    expiring = list(CreditLot.objects.filter(wallet__user=user, expires_at__isnull=False)[:3])
    # Their expiry passes (set here, before the threads start: only the ledger writes lots while they run).
    CreditLot.objects.filter(pk__in=[lot.pk for lot in expiring]).update(expires_at=timezone.now())

    def work(job):
        try:
            if job % 5 == 0:
                held = ledger.hold(user_id=user.id, amount=9, agent_id="a").hold
                if job % 10 == 0:
                    ledger.capture(hold_id=held.id, amount=6)
                    return "captured"
                ledger.release(hold_id=held.id)
                return "released"
            if job % 17 == 0:
                expire_due_credits()
                return "swept"
            ledger.charge(user_id=user.id, amount=7, agent_id="a")
            return "charged"
        except ledger.InsufficientCredits:
            return "402"

    outcomes = Counter(in_threads(list(range(200)), work))
    wallet = Wallet.objects.get(user=user)
    rows = CreditTransaction.objects.filter(wallet=wallet)
    spent = -sum(rows.filter(kind__in=["charge", "expiry"]).values_list("amount", flat=True))
    figures(f"200 mixed operations on one wallet with 20 lots ({THREADS} threads): {dict(outcomes)}")
    assert wallet.balance_credits == funded - spent == _ledger_sum(wallet) >= 0
    assert wallet.held_credits == 0
    assert rows.filter(kind="expiry").count() <= len(expiring)  # each expiring lot once at most
    assert reconcile() == []


def test_concurrent_holds_on_one_lot_pin_exactly_their_amount(user):
    """Holds and captures racing on a wallet whose credits are one lot: every hold pins exactly
    its amount (a running total taken from another version of the row once pinned 75 for 25)."""
    ledger.grant(user_id=user.id, amount=100_000, reason="one lot")

    def hold_and_capture(_):
        held = ledger.hold(user_id=user.id, amount=25, agent_id="a").hold
        ledger.capture(hold_id=held.id)
        return "ok"

    outcomes = Counter(in_threads(list(range(8 * 40)), hold_and_capture, threads=8))
    assert outcomes == {"ok": 320}
    assert Wallet.objects.get(user=user).balance_credits == 100_000 - 320 * 25
    assert reconcile() == []
