"""What a Galera node does to a plan when another node's write aborts it (a "brute-force abort"),
reproduced on one server: the compound statement's answer ends early, without its last SELECT,
and no error reaches the client — with or without its COMMIT (Galera replays a transaction
aborted after certification, and the replayed statements' answer never reaches the client).
And what a killed node or a dropped connection does: the plan's answer never arrives, whether
or not it committed."""

import re

import pytest

from billing import ledger
from billing.ledger import sql
from billing.models import CreditTransaction, Wallet

pytestmark = pytest.mark.django_db(transaction=True)


def _aborted_first(monkeypatch, *, own_transaction_only: bool, committed: bool = False, error: int | None = None):
    """The first plan's answer ends before its last SELECT: its writes ran, then the block ended
    without its COMMIT — or (`committed`) the block went on and committed, its last answer lost,
    or (`error`) that last SELECT failed with this error after the COMMIT."""
    real = sql.compound_sql
    calls = []
    end = re.compile(rf"SELECT '{sql._END_MARK}', reached, more[^;]*;")

    def compound_sql(steps, *, own_transaction, followup=None):
        text = real(steps, own_transaction=own_transaction, followup=followup)
        calls.append(own_transaction)
        if len(calls) == 1 and (own_transaction or not own_transaction_only):
            assert len(end.findall(text)) == 1
            if error is not None:  # the answer's SELECT fails once the plan has committed
                return end.sub(f"SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = {error};", text)
            if committed:  # every statement ran, the COMMIT too; the last answer is missing
                return end.sub("", text)
            # The block ends before it commits (or, in a caller's transaction, before it answers):
            # its writes are left in an open transaction, and no row or end mark is sent.
            cut = text.split("IF reached < " if own_transaction else f" SELECT '{sql._END_MARK}'")[0] + " END"
            assert "COMMIT" not in cut and not end.search(cut)
            return cut
        return text

    monkeypatch.setattr(sql, "compound_sql", compound_sql)
    # Every plan's block written afresh (not the one remembered), so that only the first is cut.
    monkeypatch.setattr(sql, "_block", lambda steps, **shape: compound_sql(steps, **shape))
    return calls


@pytest.mark.parametrize("error", [1205, 1213, 1317])
def test_an_error_after_the_commit_is_an_unknown_outcome_not_a_retry_of_nothing(user, monkeypatch, error):
    """The block's answer fails after its COMMIT (its last SELECT interrupted — or, were it a read
    on Galera, a causal wait timing out): the plan committed, so the error must not reach the
    ledger as the deadlock or lock wait it retries as if nothing was written (a capture run again
    then finds its hold captured: a wrong 409; a charge under a client's key is told it was a
    replay). It is reported as 1317, an unknown outcome, and each verb finds its first run."""
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data").hold
    _aborted_first(monkeypatch, own_transaction_only=True, error=error)
    captured = ledger.capture(hold_id=held.id)
    assert captured.transaction.amount == -30

    monkeypatch.undo()
    _aborted_first(monkeypatch, own_transaction_only=True, error=error)
    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data", idempotency_key="after-commit")
    assert (charged.replayed, charged.transaction.amount, charged.transaction.balance_after) == (False, -7, 63)

    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (63, 0)
    assert CreditTransaction.objects.filter(wallet=wallet, kind="charge").count() == 2


@pytest.mark.parametrize("committed", [False, True], ids=["rolled-back", "committed"])
def test_a_plan_whose_answer_ended_early_is_run_again_and_charged_once(user, monkeypatch, committed):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    calls = _aborted_first(monkeypatch, own_transaction_only=True, committed=committed)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert calls[:2] == [True, True]  # cut short, then run again on a fresh connection
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, charged.transaction.balance_after, charged.replayed) == (93, 93, False)
    assert CreditTransaction.objects.filter(wallet=wallet, kind="charge").count() == 1


@pytest.mark.parametrize("committed", [False, True], ids=["rolled-back", "committed"])
@pytest.mark.parametrize("amount", [None, 12], ids=["whole-hold", "part"])
def test_a_capture_whose_answer_ended_early_is_answered_as_captured_once(user, monkeypatch, committed, amount):
    """Seen on the cluster: a capture whose answer lacked its last SELECT had committed, and
    running it again found the hold captured (HoldNotPending, a wrong 409)."""
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data")
    _aborted_first(monkeypatch, own_transaction_only=True, committed=committed)

    captured = ledger.capture(hold_id=held.hold.id, amount=amount)

    wallet = Wallet.objects.get(user=user)
    (row,) = CreditTransaction.objects.filter(wallet=wallet, kind="charge")
    taken = amount or 30
    assert (captured.transaction.id, captured.transaction.amount, captured.user_id) == (row.id, -taken, user.id)
    assert (wallet.balance_credits, wallet.held_credits) == (100 - taken, 0)


@pytest.mark.parametrize("committed", [False, True], ids=["rolled-back", "committed"])
def test_a_release_whose_answer_ended_early_is_answered_as_released(user, monkeypatch, committed):
    # Well above the low-balance alert, so that no follow-up keeps the first run's transaction open.
    ledger.grant(user_id=user.id, amount=1000, reason="seed")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data")
    _aborted_first(monkeypatch, own_transaction_only=True, committed=committed)

    released = ledger.release(hold_id=held.hold.id)

    wallet = Wallet.objects.get(user=user)
    assert (released.status, wallet.balance_credits, wallet.held_credits) == ("released", 1000, 0)


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


def _answer_lost_once(monkeypatch, *, after_commit: bool, error: Exception | None = None):
    """The first plan's answer never arrives, as when the node it ran on is killed or the
    connection drops: after the plan committed (`after_commit`: its follow-up too, when one was
    due) or before it ran. `error` is what the client library raises (default: the
    InterfaceError mysqlclient raises when the answer is cut off)."""
    from django.db import InterfaceError

    from billing.ledger import spending

    real = spending.run_plan
    calls = []

    def run_plan(steps, followup=None, **options):
        calls.append(len(steps))
        if len(calls) == 1:
            if after_commit:
                real(steps, followup, **options)
            raise error or InterfaceError(0, "")
        return real(steps, followup, **options)

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


@pytest.mark.parametrize("after_commit", [True, False], ids=["committed", "not-run"])
def test_a_capture_whose_answer_was_lost_finds_its_own_capture(user, monkeypatch, after_commit):
    """Only the hold's owner settles it, so after a lost answer a hold found captured as asked
    is this call's own capture: answered with its charge row, taken once."""
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data")
    calls = _answer_lost_once(monkeypatch, after_commit=after_commit)

    captured = ledger.capture(hold_id=held.hold.id)

    assert len(calls) == 2
    wallet = Wallet.objects.get(user=user)
    (row,) = CreditTransaction.objects.filter(wallet=wallet, kind="charge")
    assert (wallet.balance_credits, wallet.held_credits, captured.transaction.id) == (70, 0, row.id)
    assert row.idempotency_key.startswith("call:") and captured.transaction.idempotency_key == row.idempotency_key


def test_after_a_lost_answer_a_hold_settled_otherwise_is_still_refused(user, monkeypatch):
    """The hold was captured for another amount (or released) meanwhile: not this call's own
    capture, so the refusal stands."""
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data")
    ledger.capture(hold_id=held.hold.id, amount=10)
    _answer_lost_once(monkeypatch, after_commit=False)

    with pytest.raises(ledger.HoldNotPending):
        ledger.capture(hold_id=held.hold.id, amount=20)
    with pytest.raises(ledger.HoldNotPending):
        ledger.release(hold_id=held.hold.id)

    assert Wallet.objects.get(user=user).balance_credits == 90


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

    def run_plan(steps, followup=None, **options):
        calls.append(1)
        if len(calls) == 1:  # as if the draws' credits came out NULL
            null_draw = "INSERT INTO credit_draws (transaction_id, lot_id, credits) SELECT NULL, NULL, NULL"
            steps = [*steps, Step(null_draw, must_change_one_row=False)]
        return real(steps, followup, **options)

    monkeypatch.setattr(spending, "run_plan", run_plan)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert len(calls) == 2
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, charged.transaction.balance_after) == (93, 93)
    assert CreditTransaction.objects.filter(wallet=wallet, kind="charge").count() == 1


@pytest.mark.parametrize("after_commit", [True, False], ids=["committed", "not-run"])
def test_commands_out_of_sync_is_a_lost_answer_not_a_raw_error(user, monkeypatch, after_commit):
    """mysqlclient raises "commands out of sync" (2014) as a ProgrammingError; seen once on the
    cluster as a raw error (a 500). It leaves the outcome unknown like a lost connection."""
    from django.db import ProgrammingError

    ledger.grant(user_id=user.id, amount=100, reason="seed")
    out_of_sync = ProgrammingError(2014, "Commands out of sync; you can't run this command now")
    calls = _answer_lost_once(monkeypatch, after_commit=after_commit, error=out_of_sync)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert len(calls) == 2
    wallet = Wallet.objects.get(user=user)
    (row,) = CreditTransaction.objects.filter(wallet=wallet, kind="charge")
    assert (wallet.balance_credits, charged.transaction.id) == (93, row.id)


def test_out_of_sync_between_the_blocks_answers_closes_the_connection_and_runs_again(user, monkeypatch):
    """The error raised while the block's later answers are read (the block itself runs to its
    end on the server): the connection is closed, and the charge, run again, replays the row its
    first run committed."""
    import MySQLdb
    from django.db import connection

    ledger.grant(user_id=user.id, amount=100, reason="seed")
    real = MySQLdb.cursors.BaseCursor.nextset
    raised = []

    def nextset(cursor):
        if not raised:
            raised.append(connection.connection)
            raise MySQLdb.ProgrammingError(2014, "Commands out of sync; you can't run this command now")
        return real(cursor)

    monkeypatch.setattr(MySQLdb.cursors.BaseCursor, "nextset", nextset)

    charged = ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    assert raised and connection.connection is not raised[0]  # a fresh connection
    wallet = Wallet.objects.get(user=user)
    (row,) = CreditTransaction.objects.filter(wallet=wallet, kind="charge")
    assert (wallet.balance_credits, charged.transaction.id, charged.replayed) == (93, row.id, False)


def test_a_second_capture_whose_first_attempt_was_lost_is_still_refused(user, monkeypatch):
    """The hold was captured by an earlier call; this call's first attempt never reached the
    server (a dead persistent connection). Its retry finds the hold captured — not under its own
    key, so not its own run: 409 HOLD_NOT_PENDING, as for any second capture."""
    from django.db import InterfaceError

    from billing.ledger import spending

    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=30, agent_id="profile-my-data")
    ledger.capture(hold_id=held.hold.id)
    real = spending.run_plan
    calls = []

    def run_plan(steps, followup=None, **options):
        calls.append(1)
        if len(calls) == 1:
            raise InterfaceError(0, "")  # never sent
        return real(steps, followup, **options)

    monkeypatch.setattr(spending, "run_plan", run_plan)

    with pytest.raises(ledger.HoldNotPending):
        ledger.capture(hold_id=held.hold.id)
    assert len(calls) == 2 and Wallet.objects.get(user=user).balance_credits == 70


@pytest.mark.usefixtures("agent_costs")
@pytest.mark.parametrize("committed", [False, True], ids=["rolled-back", "committed"])
def test_a_run_without_hold_whose_answer_ended_early_is_written_and_ended_once(user, monkeypatch, settings, committed):
    """With BILLING_ENFORCEMENT off a run has no hold: its row and its end are plans of their own.
    Cut short, each is run again (the row's id is the call's own; the end changes only a run
    still running), not answered 503 — a run left `running` has no hold to expire it."""
    from agents import runner
    from agents.models import AgentRun, RunStatus

    settings.BILLING_ENFORCEMENT = False
    _aborted_first(monkeypatch, own_transaction_only=True, committed=committed)
    run = runner.start_run(user_id=user.id, agent_id="profile-my-data", configuration={}, input_rows=1)
    assert AgentRun.objects.filter(pk=run.id).count() == 1

    _aborted_first(monkeypatch, own_transaction_only=True, committed=committed)
    finished = runner._fail(run, "boom")

    assert finished.status == RunStatus.FAILED
    assert not CreditTransaction.objects.exists()
