"""Many threads, one wallet, real MariaDB row locks.

Checked by hand against naive ledgers: with the wallet read without `select_for_update` (and
the in-place debit switched off), 200 of 200 charges "succeed" on a wallet funded for 50 and
grants lose updates (1,569 of 20,100 credits kept); with the in-place debit's balance condition
removed, the database's CHECK constraint refuses the overdraft and the charge test fails.
"""

from collections import Counter

import pytest

from billing import ledger
from billing.models import CreditTransaction, TransactionKind, Wallet
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
