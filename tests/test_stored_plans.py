"""Stored plans: the charge and hold plans run as stored procedures on MariaDB (billing/ledger/sql.py).

A stored plan's SQL must be the same for every call: a value written into it would create a
procedure per call. These tests run real calls and count the procedures and the server's own
statement counters (`Com_call_procedure`, `Questions`)."""

import threading
import uuid

import MySQLdb
import pytest
from django.db import connection

from agents import runner
from billing import ledger
from billing.ledger import sql
from billing.models import CreditTransaction, Wallet
from tests.factories import UserFactory
from tests.test_ledger import assert_consistent as rows_consistent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("agent_costs")]


def assert_consistent(user) -> Wallet:
    """The rows chain to the balance, and the lots hold it (Σ remaining == balance, Σ held == held)."""
    wallet = rows_consistent(user)
    lots = list(wallet.lots.all())
    assert sum(lot.remaining_credits for lot in lots) == wallet.balance_credits
    assert sum(lot.held_credits for lot in lots) == wallet.held_credits
    return wallet


def _procedures() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ROUTINE_NAME FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_NAME LIKE %s",
            [f"{sql._ROUTINE_PREFIX}%"],
        )
        return {name for (name,) in cursor.fetchall()}


def _drop_procedures() -> None:
    with connection.cursor() as cursor:
        for name in _procedures():
            cursor.execute(f"DROP PROCEDURE IF EXISTS {name}")


def _status(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE %s", [name])
        return int(cursor.fetchone()[1])


@pytest.fixture
def fresh_procedures():
    """No stored plan exists yet, nor is any known to this process."""
    _drop_procedures()
    sql._routines.clear()
    sql._create_failed.clear()
    yield
    sql._routines_refused.clear()
    sql._create_failed.clear()


def _every_verb(user, n: int) -> None:
    """Each stored plan once for `user`, with values of its own (`n`)."""
    ledger.charge(user_id=user.id, amount=5 + n, agent_id="profile-my-data", idempotency_key=f"c{n}")
    whole = ledger.hold(user_id=user.id, amount=7 + n, agent_id="clean-my-data").hold
    ledger.capture(hold_id=whole.id)
    part = ledger.hold(user_id=user.id, amount=9 + n, agent_id="clean-my-data", idempotency_key=f"h{n}").hold
    ledger.capture(hold_id=part.id, amount=3 + n)
    ledger.release(hold_id=ledger.hold(user_id=user.id, amount=4 + n, agent_id="profile-my-data").hold.id)
    run = runner.start_run(user_id=user.id, agent_id="profile-my-data", configuration={"n": n}, input_rows=n + 1)
    runner._succeed(run, {"row_count": n + 2})


def test_every_verb_of_the_paid_path_reuses_the_procedure_of_its_shape(fresh_procedures):
    users = [UserFactory() for _ in range(3)]
    for user in users:
        ledger.grant(user_id=user.id, amount=1_000, reason="seed")
    _every_verb(users[0], 0)
    first = _procedures()
    # charge; hold; capture whole and part; release; hold with the run's row; capture with its receipt
    assert len(first) == 7, first

    # Other users, amounts, keys, agents, holds and runs: the same SQL, so no new procedure.
    for n, user in enumerate(users, start=1):
        _every_verb(user, n)
    assert _procedures() == first
    for user in users:
        assert_consistent(user)


def test_a_charge_is_one_call_of_its_procedure(user, fresh_procedures):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ledger.charge(user_id=user.id, amount=1, agent_id="profile-my-data")  # creates it
    calls, questions = _status("Com_call_procedure"), _status("Questions")

    result = ledger.charge(user_id=user.id, amount=30, agent_id="profile-my-data", idempotency_key="a")

    sent = _status("Questions") - questions - 1  # minus the SHOW itself
    assert sent == 1
    assert _status("Com_call_procedure") - calls == 1
    row = CreditTransaction.objects.get(pk=result.transaction.pk)
    assert (row.amount, row.balance_after, row.idempotency_key) == (-30, 69, "a")
    assert row.draws.get().credits == 30
    assert assert_consistent(user).balance_credits == 69


def test_with_stored_plans_off_the_block_is_sent_as_it_is(user, settings, fresh_procedures):
    settings.BILLING_STORED_PLANS = False
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    calls = _status("Com_call_procedure")

    ledger.charge(user_id=user.id, amount=30, agent_id="profile-my-data")
    ledger.capture(hold_id=ledger.hold(user_id=user.id, amount=20, agent_id="profile-my-data").hold.id)

    assert _status("Com_call_procedure") == calls
    assert _procedures() == set()
    assert assert_consistent(user).balance_credits == 50


def test_a_dropped_procedure_is_created_again_and_the_charge_taken_once(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ledger.charge(user_id=user.id, amount=10, agent_id="profile-my-data")
    assert _procedures()
    _drop_procedures()  # known to this process, gone from the database (a restore without routines)

    ledger.charge(user_id=user.id, amount=10, agent_id="profile-my-data")

    assert _procedures()
    assert CreditTransaction.objects.filter(wallet__user=user, kind="charge").count() == 2
    assert assert_consistent(user).balance_credits == 80


def test_procedures_created_by_many_first_calls_at_once_charge_exactly(user, fresh_procedures):
    ledger.grant(user_id=user.id, amount=1_000, reason="seed")
    barrier, errors = threading.Barrier(8), []

    def charge():
        try:
            barrier.wait()
            ledger.charge(user_id=user.id, amount=25, agent_id="profile-my-data")
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=charge) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(_procedures()) == 1
    assert assert_consistent(user).balance_credits == 1_000 - 8 * 25


def test_a_user_who_may_not_create_procedures_is_charged_by_the_block(user, monkeypatch, fresh_procedures):
    ledger.grant(user_id=user.id, amount=100, reason="seed")

    def refused(*args, **kwargs):
        raise MySQLdb.OperationalError(1044, "Access denied for user 'app'@'%' to database 'billing'")

    monkeypatch.setattr(connection, "get_new_connection", refused)
    calls = _status("Com_call_procedure")

    ledger.charge(user_id=user.id, amount=30, agent_id="profile-my-data")
    ledger.charge(user_id=user.id, amount=30, agent_id="profile-my-data")

    assert connection.alias in sql._routines_refused
    assert _status("Com_call_procedure") - calls == 1  # the first CALL (refused: no such procedure), then none
    assert _procedures() == set()
    assert assert_consistent(user).balance_credits == 40


def test_a_plan_that_writes_a_value_into_its_sql_stops_creating_procedures(monkeypatch, fresh_procedures, user):
    ledger.grant(user_id=user.id, amount=1_000, reason="seed")
    monkeypatch.setattr(sql, "_MAX_ROUTINES", 2)
    for amount in (1, 2, 3, 4):
        # A stored plan with the amount written into its SQL: a new shape per amount.
        varying = f"UPDATE credit_wallets SET updated_at = updated_at WHERE user_id = %s AND {amount} > 0"
        sql.run_plan([sql.Step(varying, [user.id])], stored=True)
    assert len(_procedures()) == 2
    sql._routines.clear()


def test_the_routine_body_is_the_block_with_parameters_and_nulls():
    arguments, body = sql.routine_definition("SELECT %s, %s, '%%', %s", [1, None, "x"])
    assert arguments == "IN p_1 BIGINT, IN p_2 LONGTEXT"
    assert body == "SELECT p_1, NULL, '%', p_2"
    with pytest.raises(ValueError):
        sql.routine_definition("SELECT %s", [1, 2])
    with pytest.raises(ValueError):
        sql.routine_definition("SELECT %s, %s", [1])


def test_a_charge_with_and_without_a_run_id_both_run_stored(user, fresh_procedures):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ledger.charge(user_id=user.id, amount=10, agent_id="profile-my-data")
    run_id = uuid.uuid4()
    ledger.charge(user_id=user.id, amount=10, agent_id="profile-my-data", agent_run_id=run_id)
    assert len(_procedures()) == 2  # NULL written into one, the run id a parameter of the other
    assert CreditTransaction.objects.get(agent_run_id=run_id).amount == -10
    assert Wallet.objects.get(user=user).balance_credits == 80


def test_a_plan_sends_its_rows_only_after_its_commit():
    """A row sent while the transaction holds the wallet's lock stalls every other charge of that
    wallet (`compound_sql`): the returning steps' rows are kept in variables and sent after it,
    with the end mark, in one SELECT of no table."""
    steps = [
        sql.Step("UPDATE credit_wallets SET balance_credits = balance_credits - %s WHERE id = %s", [1, 2]),
        sql.Step(
            "INSERT INTO credit_holds (wallet_id, amount) SELECT id, 1 FROM credit_wallets WHERE id = %s "
            "RETURNING id, wallet_id",
            [2],
            must_change_one_row=False,
            returns=True,
        ),
        sql.Step("SELECT user_id FROM credit_wallets WHERE id = %s", [2], must_change_one_row=False, returns=True),
    ]
    block = sql.compound_sql(steps, own_transaction=True)
    assert "RETURNING" not in block
    answer = (
        f"SELECT '{sql._END_MARK}', reached, more, @plan_2_found, @plan_2_0, @plan_2_1, @plan_3_found, @plan_3_0; END"
    )
    assert block.endswith(answer)
    assert block.index(answer) > block.index("ELSEIF more = 0 THEN COMMIT; SET committed = 1;")
    assert block.count("SELECT") == block.count("INTO @plan_") + 2  # kept rows, the steps' own SELECT, the answer
    # Kept inside the transaction: the inserted row read back by its id, the SELECT into variables.
    assert (
        "SELECT id, wallet_id, 1 INTO @plan_2_0, @plan_2_1, @plan_2_found FROM credit_holds WHERE id = LAST_INSERT_ID()"
    ) in block
    assert "SELECT user_id, 1 INTO @plan_3_0, @plan_3_found FROM credit_wallets WHERE id = %s" in block
    for unkeepable in (
        "SELECT COUNT(*) FROM credit_wallets",
        "INSERT INTO credit_holds (id, amount) VALUES (%s, 1) RETURNING id",
        "INSERT INTO credit_holds (wallet_id, amount) VALUES (1, 1) ON DUPLICATE KEY UPDATE amount = 2 RETURNING id",
    ):
        with pytest.raises(ValueError):
            sql.Step(unkeepable, must_change_one_row=False, returns=True)


def test_a_returning_step_without_its_row_gives_none_and_a_stale_row_is_never_sent(user):
    ledger.grant(user_id=user.id, amount=10, reason="seed")
    wallet = Wallet.objects.get(user=user)
    found = sql.Step(
        "SELECT user_id FROM credit_wallets WHERE id = %s", [wallet.id], must_change_one_row=False, returns=True
    )
    missing = sql.Step(
        "SELECT user_id FROM credit_wallets WHERE id = %s",
        [-1],
        must_change_one_row=False,
        returns=True,
        row_optional=True,
    )
    # The same step index kept a row in the call before: the call without one still sends none.
    assert sql.run_plan([found], stored=True) == [(user.id,)]
    assert sql.run_plan([missing], stored=True) == [None]


def test_text_parameters_take_the_ledger_tables_collation_not_the_databases(user, fresh_procedures):
    """A procedure parameter's collation ranks with a column's: declared in the database's default
    collation, `status = p_1` against a column of another one is refused (1267, illegal mix of
    collations) — every capture and release would fail. Declared in the tables' own, it is not."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()")
        (default,) = cursor.fetchone()
        cursor.execute("ALTER DATABASE COLLATE utf8mb4_general_ci")
    sql._text_types.clear()
    try:
        ledger.grant(user_id=user.id, amount=100, reason="seed")
        held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data", idempotency_key="ключ 😀").hold
        ledger.capture(hold_id=held.id, amount=20)
        ledger.release(hold_id=ledger.hold(user_id=user.id, amount=5, agent_id="profile-my-data").hold.id)
        ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data", idempotency_key="😀")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER DATABASE COLLATE {default}")
        sql._text_types.clear()
    assert len(_procedures()) == 4
    assert assert_consistent(user).balance_credits == 73


def test_an_amount_beyond_bigint_is_refused_as_the_block_refuses_it(user, fresh_procedures):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    with pytest.raises(ledger.InsufficientCredits):
        ledger.charge(user_id=user.id, amount=2**63, agent_id="profile-my-data")
    assert assert_consistent(user).balance_credits == 100


def test_a_procedure_that_could_not_be_created_is_not_tried_again_for_a_while(user, monkeypatch, fresh_procedures):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    attempts = []

    def overloaded(*args, **kwargs):
        attempts.append(1)
        raise MySQLdb.OperationalError(1040, "Too many connections")

    monkeypatch.setattr(connection, "get_new_connection", overloaded)
    for _ in range(3):
        ledger.charge(user_id=user.id, amount=10, agent_id="profile-my-data")

    assert attempts == [1]  # then the block, for a minute, without a CALL or a new connection
    assert connection.alias not in sql._routines_refused
    assert _procedures() == set()
    assert assert_consistent(user).balance_credits == 70
    monkeypatch.undo()
    sql._create_failed.clear()  # the minute is over
    ledger.charge(user_id=user.id, amount=10, agent_id="profile-my-data")
    assert len(_procedures()) == 1


# --- branches: a short way for the common case next to the general one --------------------------


@pytest.fixture
def scratch():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE plan_scratch (id INT PRIMARY KEY, n INT NOT NULL)")
        cursor.execute("INSERT INTO plan_scratch VALUES (1, 0), (2, 0)")
    yield lambda: dict(_scratch_rows())
    with connection.cursor() as cursor:
        cursor.execute("DROP TEMPORARY TABLE IF EXISTS plan_scratch")


def _scratch_rows():
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, n FROM plan_scratch")
        return cursor.fetchall()


def _branch_plan(*, short: bool, short_finds_its_row: bool = True) -> list:
    return [
        sql.Step("UPDATE plan_scratch SET n = n + 10 WHERE id = 1"),
        sql.Branch(
            "%s = 1",
            then=(
                sql.Step("UPDATE plan_scratch SET n = n + 1 WHERE id = %s", [2 if short_finds_its_row else 99]),
                sql.Step("(SELECT n FROM plan_scratch WHERE id = 1) = 10", is_condition=True),
            ),
            otherwise=(sql.Step("UPDATE plan_scratch SET n = n + 100 WHERE id = 2"),),
            condition_params=(1 if short else 0,),
        ),
        sql.Step("SELECT n FROM plan_scratch WHERE id = %s", [1], must_change_one_row=False, returns=True),
    ]


@pytest.mark.parametrize("ways", ["compound statement", "statement by statement"])
def test_a_branch_takes_one_way_and_a_refusal_in_it_stops_the_plan_there(scratch, monkeypatch, ways):
    if ways == "statement by statement":
        monkeypatch.setattr(sql, "compound_supported", lambda: False)
    assert sql.run_plan(_branch_plan(short=True)) == [(10,)]
    assert scratch() == {1: 10, 2: 1}
    assert sql.run_plan(_branch_plan(short=False)) == [(20,)]
    assert scratch() == {1: 20, 2: 101}
    # The way taken refuses (its checked statement changes no row; then its condition fails):
    # the plan stops at the branch (step 1), and nothing of it is kept.
    with pytest.raises(sql.PlanStopped) as stopped:
        sql.run_plan(_branch_plan(short=True, short_finds_its_row=False))
    assert stopped.value.step == 1
    with pytest.raises(sql.PlanStopped) as stopped:
        sql.run_plan(_branch_plan(short=True))  # row 1 is at 30 after the first step, not 10
    assert stopped.value.step == 1
    assert scratch() == {1: 20, 2: 101}


@pytest.mark.parametrize("ways", ["compound statement", "statement by statement"])
def test_a_refusal_after_unchecked_steps_names_its_own_step_and_keeps_nothing(scratch, monkeypatch, ways):
    """Only checked steps (and the last) count in the block's `reached`: a plan that refuses after
    unchecked ones still names the step that refused, a statement or a condition."""
    if ways == "statement by statement":
        monkeypatch.setattr(sql, "compound_supported", lambda: False)

    def bump(row: int, *, checked: bool = False) -> sql.Step:
        return sql.Step("UPDATE plan_scratch SET n = n + 1 WHERE id = %s", [row], must_change_one_row=checked)

    refusing = [bump(1), bump(2, checked=True), bump(1), bump(1), bump(99, checked=True), bump(1)]
    with pytest.raises(sql.PlanStopped) as stopped:
        sql.run_plan(refusing)
    assert stopped.value.step == 4
    failing = [bump(1), bump(1), sql.Step("(SELECT n FROM plan_scratch WHERE id = 1) = 5", is_condition=True), bump(2)]
    with pytest.raises(sql.PlanStopped) as stopped:
        sql.run_plan(failing)
    assert stopped.value.step == 2
    assert scratch() == {1: 0, 2: 0}
    assert sql.run_plan([bump(2, checked=True), bump(1), bump(1)]) == []  # the last step unchecked: done
    assert scratch() == {1: 2, 2: 1}


def test_a_branch_as_the_last_step_and_a_way_that_returns_a_row_is_refused(scratch):
    last = _branch_plan(short=False)[:2]
    assert sql.run_plan(last) == []
    assert scratch() == {1: 10, 2: 100}
    returning = sql.Step("SELECT n FROM plan_scratch WHERE id = 1", must_change_one_row=False, returns=True)
    with pytest.raises(ValueError):
        sql.Branch("1 = 1", then=(returning,), otherwise=())


def test_a_plan_returns_its_own_variables_without_reading_a_table(user):
    """A charge hands back the row's id, wallet and balance from the variables its statements kept
    (`SELECT @a, @b`): kept with a SET, no table read again inside the transaction."""
    assert sql.returned_columns("SELECT @ledger_row, @ledger_wallet") == 2
    keep, sent = sql._kept_row("SELECT @ledger_row, @ledger_wallet", 3)
    assert keep == "SET @plan_3_found = 1, @plan_3_0 = @ledger_row, @plan_3_1 = @ledger_wallet"
    assert sent == ("@plan_3_found", "@plan_3_0", "@plan_3_1")
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    charged = ledger.charge(user_id=user.id, amount=20, agent_id="profile-my-data")
    wallet = Wallet.objects.get(user=user)
    assert (charged.transaction.wallet_id, charged.transaction.balance_after) == (wallet.id, 30)
    assert CreditTransaction.objects.get(pk=charged.transaction.pk).balance_after == 30


def test_a_plans_block_is_written_once_for_its_shape(user, monkeypatch):
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    ledger.charge(user_id=user.id, amount=1, agent_id="profile-my-data")
    written = []
    real = sql.compound_sql
    monkeypatch.setattr(sql, "compound_sql", lambda *a, **k: written.append(1) or real(*a, **k))
    for amount in (2, 3):
        ledger.charge(user_id=user.id, amount=amount, agent_id="profile-my-data")
    assert written == []
    assert Wallet.objects.get(user=user).balance_credits == 44
