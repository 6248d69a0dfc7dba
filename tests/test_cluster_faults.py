"""What a Galera node does to a plan when another node's write aborts it (a "brute-force abort"),
reproduced on one server: the compound statement ends early, without its last SELECT and without
its COMMIT, and no error reaches the client. And what a killed node or a dropped connection does:
the plan's answer never arrives, whether or not it committed."""

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


def _answer_lost_once(monkeypatch, *, after_commit: bool):
    """The first plan's answer never arrives, as when the node it ran on is killed or the
    connection drops: after the plan committed (`after_commit`: its follow-up too, when one was
    due) or before it ran."""
    from django.db import InterfaceError

    from billing.ledger import spending

    real = spending.run_plan
    calls = []

    def run_plan(steps, followup=None):
        calls.append(len(steps))
        if len(calls) == 1:
            if after_commit:
                real(steps, followup)
            raise InterfaceError(0, "")  # what mysqlclient raises when the answer is cut off
        return real(steps, followup)

    monkeypatch.setattr(spending, "run_plan", run_plan)
    return calls


@pytest.mark.parametrize("after_commit", [True, False], ids=["committed", "not-run"])
def test_a_charge_without_a_key_whose_answer_was_lost_is_taken_exactly_once(user, monkeypatch, after_commit):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    calls = _answer_lost_once(monkeypatch, after_commit=after_commit)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert len(calls) == 2  # run again on a fresh connection, not refused
    assert not charged.replayed  # the call's one result, whichever attempt wrote it
    wallet = Wallet.objects.get(user=user)
    (row,) = CreditTransaction.objects.filter(wallet=wallet, kind="charge")
    assert (wallet.balance_credits, row.balance_after, charged.transaction.id) == (93, 93, row.id)
    assert row.idempotency_key.startswith("call:")  # the key the call gave itself


def test_a_hold_whose_answer_was_lost_after_commit_is_held_once(user, monkeypatch):
    from billing.models import CreditHold

    ledger.grant(user_id=user.id, amount=100, reason="seed")
    _answer_lost_once(monkeypatch, after_commit=True)

    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data")

    wallet = Wallet.objects.get(user=user)
    (hold,) = CreditHold.objects.filter(wallet=wallet)
    assert (wallet.held_credits, hold.id, held.replayed) == (30, held.hold.id, False)


def test_keyless_charges_never_replay_each_other(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    first = ledger.charge(user_id=user.id, amount=5, agent_id="profile-my-data")
    second = ledger.charge(user_id=user.id, amount=5, agent_id="profile-my-data")

    assert (first.replayed, second.replayed) == (False, False)
    assert first.transaction.id != second.transaction.id
    assert Wallet.objects.get(user=user).balance_credits == 90


def test_a_capture_whose_answer_was_lost_is_refused_not_guessed(user, monkeypatch):
    """A capture has no key to find its own first run by: the call answers 503 (LedgerBusy), and
    a retry finds the hold settled (HoldNotPending) or captures it once; nothing is taken twice."""
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data")
    _answer_lost_once(monkeypatch, after_commit=True)

    with pytest.raises(ledger.LedgerBusy):
        ledger.capture(hold_id=held.hold.id)

    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (70, 0)
    assert CreditTransaction.objects.filter(wallet=wallet, kind="charge").count() == 1


def test_a_charge_whose_answer_was_lost_is_run_once_more_when_the_budget_is_spent(user, monkeypatch, settings):
    """Past the retry budget a lost answer still earns one run: the caller learns the outcome
    (here: the first run committed) instead of a 503 it cannot safely retry without a key."""
    settings.LEDGER_RETRY_BUDGET_SECONDS = 0
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    _answer_lost_once(monkeypatch, after_commit=True)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert (charged.replayed, Wallet.objects.get(user=user).balance_credits) == (False, 93)


def test_a_charge_whose_answer_was_lost_and_then_refused_finds_its_first_run(user, monkeypatch):
    """The wallet held exactly the amount: the second run is refused (no credits left), and the
    refusal is not the answer: the first run's row under the call's key is."""
    ledger.grant(user_id=user.id, amount=7, reason="seed")
    _answer_lost_once(monkeypatch, after_commit=True)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    wallet = Wallet.objects.get(user=user)
    (row,) = CreditTransaction.objects.filter(wallet=wallet, kind="charge")
    assert (wallet.balance_credits, charged.transaction.id, charged.replayed) == (0, row.id, False)


def test_with_a_clients_key_a_lost_answer_is_still_the_first_answer(user, monkeypatch):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    _answer_lost_once(monkeypatch, after_commit=True)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data", idempotency_key="client:k1")
    again = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data", idempotency_key="client:k1")

    assert (charged.replayed, again.replayed) == (False, True)  # 201, then 200 for the real replay
    assert Wallet.objects.get(user=user).balance_credits == 93


def test_every_connection_reads_causally_on_a_galera_node():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.wsrep_sync_wait & 1")
        assert cursor.fetchone()[0] == 1


def test_a_plan_interrupted_into_a_null_is_run_again_not_a_raw_error(user, monkeypatch):
    """KILL QUERY (or a Galera brute-force abort) landing while the burn order's window is
    computed can let the statement go on with NULL credits: MariaDB then refuses the row (1048).
    That is an interruption, not bad input: rolled back, and the charge is run again."""
    from billing.ledger import spending
    from billing.ledger.sql import Step

    ledger.grant(user_id=user.id, amount=100, reason="seed")
    real = spending.run_plan
    calls = []

    def run_plan(steps, followup=None):
        calls.append(1)
        if len(calls) == 1:  # as if the draws' credits came out NULL
            null_draw = "INSERT INTO credit_draws (transaction_id, lot_id, credits) SELECT NULL, NULL, NULL"
            steps = [*steps, Step(null_draw, must_change_one_row=False)]
        return real(steps, followup)

    monkeypatch.setattr(spending, "run_plan", run_plan)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert len(calls) == 2
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, charged.transaction.balance_after) == (93, 93)
    assert CreditTransaction.objects.filter(wallet=wallet, kind="charge").count() == 1
