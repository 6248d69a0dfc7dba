"""What a Galera node does to a plan when another node's write aborts it (a "brute-force abort"),
reproduced on one server: the compound statement ends early, without its last SELECT and without
its COMMIT, and no error reaches the client."""

import pytest

from billing import ledger
from billing.ledger import sql
from billing.models import CreditTransaction, Wallet

pytestmark = pytest.mark.django_db(transaction=True)


def _aborted_first(monkeypatch, *, own_transaction_only: bool):
    real = sql.compound_sql
    calls = []

    def compound_sql(steps, *, own_transaction, followup=None):
        text = real(steps, own_transaction=own_transaction, followup=followup)
        calls.append(own_transaction)
        if len(calls) == 1 and (own_transaction or not own_transaction_only):
            # The block's writes ran; then it ended: no final SELECT, no COMMIT.
            return text.split(f"SELECT '{sql._END_MARK}', reached, more;")[0] + " END"
        return text

    monkeypatch.setattr(sql, "compound_sql", compound_sql)
    return calls


def test_a_plan_aborted_before_its_end_is_rolled_back_and_run_again(user, monkeypatch):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    calls = _aborted_first(monkeypatch, own_transaction_only=True)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert calls[:2] == [True, True]  # aborted, then run again on a fresh connection
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, charged.transaction.balance_after) == (93, 93)
    assert CreditTransaction.objects.filter(wallet=wallet, kind="charge").count() == 1


def test_inside_a_callers_transaction_an_aborted_plan_is_refused_with_nothing_kept(user, monkeypatch):
    from django.db import transaction

    ledger.grant(user_id=user.id, amount=100, reason="seed")
    _aborted_first(monkeypatch, own_transaction_only=False)

    with pytest.raises(ledger.LedgerBusy):
        with transaction.atomic():
            ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    wallet = Wallet.objects.get(user=user)
    assert wallet.balance_credits == 100
    assert not CreditTransaction.objects.filter(wallet=wallet, kind="charge").exists()
