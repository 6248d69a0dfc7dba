"""The ledger verbs, one at a time, on MariaDB."""

import dataclasses
import uuid

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Sum

from billing import ledger
from billing.ledger import spending
from billing.ledger import sql as billing_sql
from billing.models import CreditHold, CreditTransaction, HoldStatus, TransactionKind, Wallet

pytestmark = pytest.mark.django_db


def assert_consistent(user):
    """balance == Σ amounts; held == Σ pending holds; balance_after chains row to row."""
    wallet = Wallet.objects.get(user=user)
    rows = list(CreditTransaction.objects.filter(wallet=wallet).order_by("id"))
    assert wallet.balance_credits == sum(r.amount for r in rows)
    running = 0
    for row in rows:
        running += row.amount
        assert row.balance_after == running
    pending = CreditHold.objects.filter(wallet=wallet, status=HoldStatus.PENDING).aggregate(s=Sum("amount"))["s"]
    assert wallet.held_credits == (pending or 0)
    return wallet


def test_grant_adds_credits_and_writes_one_row(user):
    result = ledger.grant(user_id=user.id, amount=500, reason="welcome")
    assert result.balance_after == 500
    assert not result.replayed
    row = CreditTransaction.objects.get()
    assert (row.kind, row.amount, row.balance_after, row.reason) == (TransactionKind.GRANT, 500, 500, "welcome")
    assert assert_consistent(user).balance_credits == 500


@pytest.mark.parametrize("amount", [0, -5, 2.5, "10", True, None])
def test_grant_refuses_non_positive_or_non_integer_amounts(user, amount):
    with pytest.raises(ledger.InvalidAmount):
        ledger.grant(user_id=user.id, amount=amount, reason="x")
    assert not CreditTransaction.objects.exists()


def test_grant_refuses_more_than_the_configured_maximum(user, settings):
    settings.BILLING_MAX_GRANT = 1000
    with pytest.raises(ledger.InvalidAmount):
        ledger.grant(user_id=user.id, amount=1001, reason="too much")
    assert ledger.grant(user_id=user.id, amount=1000, reason="just right").balance_after == 1000


def test_grant_requires_a_reason(user):
    with pytest.raises(ledger.InvalidLedgerRequest):
        ledger.grant(user_id=user.id, amount=5, reason="  ")


def test_charge_takes_credits_and_records_the_agent(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    result = ledger.charge(user_id=user.id, amount=30, agent_id="profile-my-data")
    assert result.balance_after == 70
    assert result.transaction.kind == TransactionKind.CHARGE
    assert result.transaction.amount == -30
    assert result.transaction.agent_id == "profile-my-data"
    assert_consistent(user)


def test_charge_beyond_the_balance_raises_with_required_and_available(user):
    ledger.grant(user_id=user.id, amount=20, reason="seed")
    with pytest.raises(ledger.InsufficientCredits) as err:
        ledger.charge(user_id=user.id, amount=25, agent_id="profile-my-data")
    assert (err.value.required, err.value.available) == (25, 20)
    assert Wallet.objects.get(user=user).balance_credits == 20
    assert CreditTransaction.objects.count() == 1


def test_charge_for_a_user_without_wallet_is_refused_and_writes_nothing(user):
    with pytest.raises(ledger.InsufficientCredits) as err:
        ledger.charge(user_id=user.id, amount=1, agent_id="a")
    assert err.value.available == 0
    assert not CreditTransaction.objects.exists()


def test_charge_replayed_with_the_same_key_moves_credits_once(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    first = ledger.charge(user_id=user.id, amount=40, agent_id="a", idempotency_key="k1")
    again = ledger.charge(user_id=user.id, amount=40, agent_id="a", idempotency_key="k1")
    assert again.replayed and again.transaction.id == first.transaction.id
    assert again.balance_after == 60
    assert Wallet.objects.get(user=user).balance_credits == 60
    assert CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).count() == 1


def test_grant_replayed_with_the_same_key_moves_credits_once(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed", idempotency_key="g1")
    ledger.grant(user_id=user.id, amount=100, reason="seed", idempotency_key="g1")
    assert Wallet.objects.get(user=user).balance_credits == 100
    assert CreditTransaction.objects.count() == 1


def test_same_key_with_different_parameters_is_a_conflict(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed", idempotency_key="g1")
    with pytest.raises(ledger.IdempotencyConflict):
        ledger.grant(user_id=user.id, amount=99, reason="seed", idempotency_key="g1")
    with pytest.raises(ledger.IdempotencyConflict):
        ledger.charge(user_id=user.id, amount=10, agent_id="a", idempotency_key="g1")
    assert Wallet.objects.get(user=user).balance_credits == 100


def test_idempotency_keys_are_scoped_per_wallet(user, other_user):
    ledger.grant(user_id=user.id, amount=10, reason="a", idempotency_key="same")
    ledger.grant(user_id=other_user.id, amount=10, reason="a", idempotency_key="same")
    assert Wallet.objects.get(user=other_user).balance_credits == 10


def test_hold_reserves_without_moving_the_balance(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=60, agent_id="a").hold
    wallet = assert_consistent(user)
    assert (wallet.balance_credits, wallet.held_credits, wallet.available_credits) == (100, 60, 40)
    assert held.status == HoldStatus.PENDING
    with pytest.raises(ledger.InsufficientCredits) as err:
        ledger.charge(user_id=user.id, amount=41, agent_id="a")
    assert err.value.available == 40
    with pytest.raises(ledger.InsufficientCredits):
        ledger.hold(user_id=user.id, amount=41, agent_id="a")


def test_capture_turns_the_hold_into_one_charge(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=60, agent_id="clean-my-data").hold
    result = ledger.capture(hold_id=held.id)
    assert result.transaction.amount == -60 and result.transaction.hold_id == held.id
    wallet = assert_consistent(user)
    assert (wallet.balance_credits, wallet.held_credits) == (40, 0)
    assert CreditHold.objects.get(pk=held.id).status == HoldStatus.CAPTURED


def test_partial_capture_releases_the_rest(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=60, agent_id="a").hold
    ledger.capture(hold_id=held.id, amount=25)
    wallet = assert_consistent(user)
    assert (wallet.balance_credits, wallet.held_credits) == (75, 0)


def test_a_hold_is_captured_or_released_only_once(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=60, agent_id="a").hold
    ledger.capture(hold_id=held.id)
    with pytest.raises(ledger.HoldNotPending):
        ledger.capture(hold_id=held.id)
    with pytest.raises(ledger.HoldNotPending):
        ledger.release(hold_id=held.id)
    other = ledger.hold(user_id=user.id, amount=10, agent_id="a").hold
    ledger.release(hold_id=other.id)
    with pytest.raises(ledger.HoldNotPending):
        ledger.capture(hold_id=other.id)
    wallet = assert_consistent(user)
    assert (wallet.balance_credits, wallet.held_credits) == (40, 0)


def test_release_gives_the_credits_back(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=100, agent_id="a").hold
    ledger.release(hold_id=held.id)
    wallet = assert_consistent(user)
    assert (wallet.balance_credits, wallet.held_credits) == (100, 0)
    assert CreditTransaction.objects.count() == 1


def test_hold_replayed_with_the_same_key_reserves_once(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    first = ledger.hold(user_id=user.id, amount=30, agent_id="a", idempotency_key="h")
    again = ledger.hold(user_id=user.id, amount=30, agent_id="a", idempotency_key="h")
    assert again.replayed and again.hold.id == first.hold.id
    assert Wallet.objects.get(user=user).held_credits == 30


def test_adjust_debits_only_what_is_available(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ledger.hold(user_id=user.id, amount=50, agent_id="a")
    with pytest.raises(ledger.InsufficientCredits):
        ledger.adjust(user_id=user.id, amount=-51, reason="correction")
    result = ledger.adjust(user_id=user.id, amount=-50, reason="correction")
    assert result.transaction.kind == TransactionKind.ADJUSTMENT
    wallet = assert_consistent(user)
    assert (wallet.balance_credits, wallet.held_credits) == (50, 50)


def test_ledger_rows_cannot_be_changed_or_deleted_through_the_orm(user):
    row = ledger.grant(user_id=user.id, amount=10, reason="seed").transaction
    row.amount = 1_000_000
    with pytest.raises(TypeError):
        row.save()
    with pytest.raises(TypeError):
        row.delete()
    with pytest.raises(TypeError):
        CreditTransaction.objects.filter(pk=row.pk).update(amount=5)
    with pytest.raises(TypeError):
        CreditTransaction.objects.all().delete()
    assert CreditTransaction.objects.get(pk=row.pk).amount == 10


def test_the_database_rejects_an_update_of_a_ledger_row_behind_the_orm(user):
    row = ledger.grant(user_id=user.id, amount=10, reason="seed").transaction
    with pytest.raises(Exception, match="immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE credit_transactions SET amount = 999 WHERE id = %s", [row.id])
    assert CreditTransaction.objects.get(pk=row.pk).amount == 10


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE credit_wallets SET balance_credits = -1 WHERE user_id = %s",
        "UPDATE credit_wallets SET held_credits = -1 WHERE user_id = %s",
        "UPDATE credit_wallets SET held_credits = balance_credits + 1 WHERE user_id = %s",
    ],
    ids=["negative-balance", "negative-held", "held-above-balance"],
)
def test_the_database_itself_rejects_an_impossible_wallet(user, sql):
    ledger.grant(user_id=user.id, amount=10, reason="seed")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [user.id])
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (10, 0)


def test_the_database_rejects_a_duplicate_idempotency_key_for_a_wallet(user):
    ledger.grant(user_id=user.id, amount=10, reason="seed", idempotency_key="dup")
    wallet = Wallet.objects.get(user=user)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditTransaction.objects.create(
            wallet=wallet, kind=TransactionKind.GRANT, amount=1, balance_after=11, idempotency_key="dup"
        )


def _questions() -> int:
    """Statements this connection has sent, counted by MariaDB itself."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
        return int(cursor.fetchone()[1])


@pytest.mark.django_db(transaction=True)
def test_a_charge_is_one_statement_and_its_row_is_complete(user, settings):
    settings.BALANCE_LOW_THRESHOLD_CREDITS = 10  # the common case: no threshold crossed (a crossing adds 2)
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    # A first charge of the same shape: the stored plan is created on first use (its CALL refused,
    # the procedure created on a connection of its own, the CALL again).
    ledger.charge(user_id=user.id, amount=5, agent_id="x", idempotency_key="warm", agent_run_id=uuid.uuid4())
    before = _questions()
    run_id = uuid.uuid4()
    result = ledger.charge(
        user_id=user.id,
        amount=30,
        agent_id="profile-my-data",
        idempotency_key="run-1",
        agent_run_id=run_id,
        metadata={"units": 3},
    )
    sent = _questions() - before - 1  # the second SHOW counts itself
    # One compound statement: START TRANSACTION, UPDATE, INSERT … RETURNING, COMMIT
    assert sent == 1
    stored = CreditTransaction.objects.get(pk=result.transaction.pk)
    returned = result.transaction
    # The row built from the statement's RETURNING equals the stored one, field for field.
    for field in CreditTransaction._meta.concrete_fields:
        if field.name != "created_at":
            assert getattr(returned, field.attname) == getattr(stored, field.attname), field.name
    assert (returned._state.adding, returned._state.db) == (False, "default")
    assert (stored.agent_run_id, stored.idempotency_key, stored.reason, stored.hold_id) == (run_id, "run-1", "", None)
    assert (stored.kind, stored.amount, stored.balance_after, stored.metadata) == ("charge", -30, 65, {"units": 3})
    assert abs((returned.created_at - stored.created_at).total_seconds()) < 1e-3
    assert assert_consistent(user).balance_credits == 65


@pytest.mark.parametrize("compound", [True, False], ids=["compound-statement", "statement-by-statement"])
def test_both_plan_executors_replay_refuse_and_conflict_alike(user, monkeypatch, compound):
    # The same plan runs as one MariaDB compound statement or statement by statement (SQLite).
    if not compound:
        monkeypatch.setattr(billing_sql, "compound_supported", lambda: False)
    _replay_refuse_and_conflict(user)


@pytest.mark.django_db(transaction=True)
def test_the_in_place_charge_in_its_own_transaction_replays_refuses_and_conflicts_alike(user):
    # Outside any transaction the compound statement carries its own START TRANSACTION … COMMIT,
    # and a reused key's IntegrityError leaves it open until the ledger rolls it back.
    _replay_refuse_and_conflict(user)
    assert not connection.in_atomic_block and connection.get_autocommit()


def _replay_refuse_and_conflict(user) -> None:
    ledger.grant(user_id=user.id, amount=100, reason="seed", idempotency_key="shared-key")
    first = ledger.charge(user_id=user.id, amount=40, agent_id="a", idempotency_key="k1")
    again = ledger.charge(user_id=user.id, amount=40, agent_id="a", idempotency_key="k1")
    assert (first.replayed, again.replayed, again.transaction.pk) == (False, True, first.transaction.pk)
    with pytest.raises(ledger.IdempotencyConflict):
        ledger.charge(user_id=user.id, amount=41, agent_id="a", idempotency_key="k1")
    with pytest.raises(ledger.IdempotencyConflict):  # a key first used by another verb
        ledger.charge(user_id=user.id, amount=1, agent_id="a", idempotency_key="shared-key")
    with pytest.raises(ledger.InsufficientCredits) as refused:
        ledger.charge(user_id=user.id, amount=61, agent_id="a")
    assert (refused.value.required, refused.value.available) == (61, 60)
    ledger.hold(user_id=user.id, amount=50, agent_id="a")
    with pytest.raises(ledger.InsufficientCredits):  # held credits are not available
        ledger.charge(user_id=user.id, amount=11, agent_id="a")
    assert ledger.charge(user_id=user.id, amount=10, agent_id="a").balance_after == 50
    assert assert_consistent(user).balance_credits == 50
    assert CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).count() == 2


def test_a_charge_inside_an_outer_transaction_rolls_back_with_it(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ledger.charge(user_id=user.id, amount=10, agent_id="a", idempotency_key="outer")
    with pytest.raises(RuntimeError), transaction.atomic():
        assert ledger.charge(user_id=user.id, amount=10, agent_id="a", idempotency_key="outer").replayed
        ledger.charge(user_id=user.id, amount=20, agent_id="a")
        raise RuntimeError("the caller fails")
    assert assert_consistent(user).balance_credits == 90


@pytest.mark.django_db(transaction=True)
def test_a_failure_after_the_debit_rolls_the_whole_charge_back(user, monkeypatch):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    # The wallet UPDATE succeeds, then writing the ledger row fails.
    _fail_the_ledger_row(monkeypatch)
    with pytest.raises(DatabaseError, match="no_such_table"):
        ledger.charge(user_id=user.id, amount=30, agent_id="a")
    assert not connection.in_atomic_block and connection.get_autocommit()
    monkeypatch.undo()
    assert assert_consistent(user).balance_credits == 100
    assert ledger.charge(user_id=user.id, amount=30, agent_id="a").balance_after == 70


def test_a_failure_after_the_debit_inside_an_outer_transaction_undoes_only_the_charge(user, monkeypatch):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    _fail_the_ledger_row(monkeypatch)
    with transaction.atomic():
        with pytest.raises(DatabaseError, match="no_such_table"):
            ledger.charge(user_id=user.id, amount=30, agent_id="a")
        monkeypatch.undo()
        # The caller's transaction goes on: the failed debit was undone to its savepoint.
        assert ledger.charge(user_id=user.id, amount=20, agent_id="a").balance_after == 80
    assert assert_consistent(user).balance_credits == 80


def _fail_the_ledger_row(monkeypatch) -> None:
    original = spending._charge_plan

    def failing_plan(**kwargs):
        steps = original(**kwargs)
        (index,) = [i for i, step in enumerate(steps) if "INSERT INTO credit_transactions" in getattr(step, "sql", "")]
        broken = dataclasses.replace(
            steps[index], sql=steps[index].sql.replace("INTO credit_transactions", "INTO no_such_table")
        )
        return [*steps[:index], broken, *steps[index + 1 :]]

    monkeypatch.setattr(spending, "_charge_plan", failing_plan)
