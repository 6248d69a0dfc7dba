"""An agent run's money: hold and run row in one commit, charge and receipt in one commit,
one lock order, run-owned holds, leases, and the checks `reconcile_ledger` makes of runs."""

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from agents import runner
from agents.datasets import Dataset
from agents.models import AgentRun, RunStatus
from billing import ledger
from billing.holds import expire_due_holds
from billing.ledger import sql as billing_sql
from billing.models import CreditHold, CreditTransaction, HoldStatus, TransactionKind, Wallet
from billing.reconcile import reconcile
from tests.concurrency import in_threads
from tests.conftest import bearer_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]

PROFILE = "profile-my-data"  # costs 25
TINY = Dataset(columns=["a"], rows=[{"a": "1"}, {"a": None}], source_format="csv")
PROFILE_OPTIONS = {"top_values": 5, "high_null_ratio": 0.5, "categorical_max_distinct": 20}
BODY = {"tool_configuration": {}, "data": {"csv": "a,b\n1,x\n2,y\n"}}


def balances(user) -> tuple[int, int]:
    wallet = Wallet.objects.get(user=user)
    return wallet.balance_credits, wallet.held_credits


def start(user, *, queued: bool = False) -> AgentRun:
    return runner.start_run(
        user_id=user.id,
        agent_id=PROFILE,
        configuration=PROFILE_OPTIONS,
        input_rows=len(TINY.rows),
        input_payload=runner._dataset_payload(TINY) if queued else None,
    )


def _questions() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
        return int(cursor.fetchone()[1])


# --- one commit ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_runs_billing_is_three_statements_hold_with_row_then_charge_with_receipt(user, figures, settings):
    settings.BALANCE_LOW_THRESHOLD_CREDITS = 10  # the common case: no threshold crossed (a crossing adds 2)
    ledger.grant(user_id=user.id, amount=125, reason="seed")
    runner._succeed(start(user), {"row_count": 1})  # the first run creates the stored plans
    before = _questions()
    run = start(user)
    runner._succeed(run, {"row_count": 2})
    sent = _questions() - before - 1  # the second SHOW counts itself

    figures(f"SQL statements for one agent run's billing (price, hold + run row, capture + receipt): {sent}")
    assert sent <= 3
    run.refresh_from_db()
    assert (run.status, run.credits_charged, run.balance_after) == (RunStatus.SUCCEEDED, 25, 75)
    row = CreditTransaction.objects.get(agent_run_id=run.id)
    assert (row.kind, row.amount, row.hold_id, row.balance_after) == (TransactionKind.CHARGE, -25, run.hold_id, 75)
    hold = CreditHold.objects.get(pk=run.hold_id)
    assert (hold.status, hold.agent_run_id) == (HoldStatus.CAPTURED, run.id)
    assert balances(user) == (75, 0)


@pytest.mark.parametrize("compound", [True, False], ids=["compound-statement", "statement-by-statement"])
def test_the_charge_is_not_kept_when_the_receipt_cannot_be_written(user, monkeypatch, compound):
    if not compound:
        monkeypatch.setattr(billing_sql, "compound_supported", lambda: False)
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    run = start(user)
    original = runner._end_run

    def broken_receipt(*args, **kwargs):
        step = original(*args, **kwargs)
        return billing_sql.Step(step.sql.replace("UPDATE agent_runs", "UPDATE no_such_table"), step.params)

    monkeypatch.setattr(runner, "_end_run", broken_receipt)
    with pytest.raises(DatabaseError, match="no_such_table"):
        runner._succeed(run, {"row_count": 2})

    # Nothing of the capture was kept: the hold is pending, no charge row, the run unfinished.
    assert balances(user) == (100, 25)
    assert CreditHold.objects.get(pk=run.hold_id).status == HoldStatus.PENDING
    assert not CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()
    assert AgentRun.objects.get(pk=run.id).status == RunStatus.RUNNING


def test_the_hold_is_not_kept_when_the_run_row_cannot_be_written(user, monkeypatch):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    original = runner._insert_run

    def broken_row(run, **kwargs):
        step = original(run, **kwargs)
        return billing_sql.Step(step.sql.replace("INSERT INTO agent_runs", "INSERT INTO no_such_table"), step.params)

    monkeypatch.setattr(runner, "_insert_run", broken_row)
    with pytest.raises(DatabaseError, match="no_such_table"):
        start(user)
    assert balances(user) == (100, 0)
    assert not CreditHold.objects.exists() and not AgentRun.objects.exists()


def test_a_failed_run_releases_its_hold_and_ends_in_one_commit(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    run = runner._fail(start(user), "ToolTimedOut: took too long")
    assert (run.status, run.credits_charged, run.balance_after) == (RunStatus.FAILED, 0, 100)
    assert CreditHold.objects.get(pk=run.hold_id).status == HoldStatus.RELEASED
    assert balances(user) == (100, 0)


def test_a_redelivered_run_whose_hold_was_captured_ends_succeeded_with_that_charge(user):
    # A row written before runs and holds committed together: charged, but the run still queued.
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    run = start(user, queued=True)
    ledger.capture(hold_id=run.hold_id, agent_run_id=run.id)

    again = runner.execute_stored_run(run_id=str(run.id))

    assert (again.status, again.credits_charged) == (RunStatus.SUCCEEDED, 25)
    assert CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).count() == 1
    assert balances(user) == (75, 0)
    assert reconcile() == []


def test_a_redelivered_run_whose_hold_expired_is_never_run_nor_charged(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    run = start(user, queued=True)
    CreditHold.objects.filter(pk=run.hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_due_holds() == 1
    assert AgentRun.objects.get(pk=run.id).status == RunStatus.EXPIRED  # ended with its hold

    again = runner.execute_stored_run(run_id=str(run.id))
    assert (again.status, again.credits_charged) == (RunStatus.EXPIRED, 0)
    assert balances(user) == (100, 0)


def test_capture_after_expiry_releases_the_hold_at_once_and_expires_its_run(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    run = start(user)
    CreditHold.objects.filter(pk=run.hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))

    finished = runner._succeed(run, {"row_count": 2})

    assert (finished.status, finished.credits_charged) == (RunStatus.EXPIRED, 0)
    assert CreditHold.objects.get(pk=run.hold_id).status == HoldStatus.EXPIRED
    assert balances(user) == (100, 0)  # released now, not at the next sweep


# --- run-owned holds ----------------------------------------------------------------------------------


def test_the_owner_cannot_settle_a_hold_that_pays_for_a_run(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    run = start(user)
    client = bearer_client(user)

    for action in ("release", "capture"):
        response = client.post(f"/billing/holds/{run.hold_id}/{action}")
        assert response.status_code == 409, response.content
        assert response.json()["error_code"] == "HOLD_OWNED_BY_RUN"
    assert CreditHold.objects.get(pk=run.hold_id).status == HoldStatus.PENDING

    finished = runner._succeed(run, {"row_count": 2})
    assert (finished.status, finished.credits_charged) == (RunStatus.SUCCEEDED, 25)
    assert balances(user) == (75, 0)


# --- leases ----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_long_healthy_run_renews_its_hold_while_a_dead_ones_expires(user, settings, monkeypatch):
    settings.BILLING_HOLD_TTL = timedelta(seconds=1)
    settings.AGENT_RUN_TIMEOUT_SECONDS = 30
    monkeypatch.setitem(runner.TOOLS, PROFILE, "tests.sandbox_tools:sleepy")
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    orphan = start(user, queued=True)  # its worker never comes: nobody renews its hold

    swept = Counter()
    stop = threading.Event()

    def sweep():
        try:
            while not stop.wait(0.1):
                swept["expired"] += expire_due_holds()
        finally:
            connection.close()

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        run = start(user)
        run.configuration = {"seconds": 3.5, "busy": False}
        finished = runner.execute_run(run=run, dataset=TINY)  # 3.5 s > 3 × the TTL
    finally:
        stop.set()
        sweeper.join()

    assert (finished.status, finished.credits_charged) == (RunStatus.SUCCEEDED, 25)
    assert AgentRun.objects.get(pk=orphan.id).status == RunStatus.EXPIRED
    assert swept["expired"] == 1
    assert balances(user) == (75, 0)


# --- one lock order ----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_runs_captures_releases_and_expiry_on_one_wallet_never_deadlock(user, settings, figures):
    """Every path that locks wallet, hold and run at once, on one wallet, concurrently:
    agent runs that succeed and fail, API holds captured and released, holds expiring under
    a sweeper. One lock order means no deadlock reaches anyone (no LedgerBusy)."""
    settings.BILLING_HOLD_TTL = timedelta(seconds=30)
    ledger.grant(user_id=user.id, amount=100_000, reason="seed")
    client_jobs = ["run-ok", "run-fail", "hold-capture", "hold-release", "expire"] * 12

    def work(job: str) -> str:
        try:
            if job.startswith("run"):
                run = start(user)
                if job == "run-ok":
                    return runner._succeed(run, {"row_count": 2}).status
                return runner._fail(run, "ValueError: planned").status
            if job == "expire":
                run = start(user, queued=True)
                CreditHold.objects.filter(pk=run.hold_id).update(expires_at=timezone.now())
                expire_due_holds()
                return "swept"
            held = ledger.hold(user_id=user.id, amount=7, agent_id="x").hold
            if job == "hold-capture":
                ledger.capture(hold_id=held.id)
                return "captured"
            ledger.release(hold_id=held.id)
            return "released"
        except ledger.LedgerBusy:
            return "LEDGER_BUSY"

    outcomes = Counter(in_threads(client_jobs, work, threads=12))
    figures(f"one lock order, 60 mixed operations on one wallet from 12 threads: {dict(outcomes)}")

    assert "LEDGER_BUSY" not in outcomes
    assert outcomes[RunStatus.SUCCEEDED] == 12 and outcomes[RunStatus.FAILED] == 12
    expire_due_holds()
    assert not CreditHold.objects.filter(status=HoldStatus.PENDING).exists()
    assert not AgentRun.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists()
    assert reconcile() == []
    assert balances(user) == (100_000 - 12 * 25 - 12 * 7, 0)


# --- reconcile_ledger checks runs ----------------------------------------------------------------------------


def test_reconcile_finds_runs_whose_state_disagrees_with_the_ledger(user, settings):
    ledger.grant(user_id=user.id, amount=500, reason="seed")
    good = runner._succeed(start(user), {"row_count": 2})
    assert reconcile() == []

    # A succeeded run without its charge, a failed run with one, a charge that differs.
    unpaid = start(user)
    AgentRun.objects.filter(pk=unpaid.id).update(status=RunStatus.SUCCEEDED, credits_charged=25)
    failed = start(user)
    ledger.capture(hold_id=failed.hold_id, agent_run_id=failed.id)
    AgentRun.objects.filter(pk=failed.id).update(status=RunStatus.FAILED)
    AgentRun.objects.filter(pk=good.id).update(credits_charged=24)
    # A hold left pending long past its expiry (the sweep is not running).
    stale = ledger.hold(user_id=user.id, amount=5, agent_id="x").hold
    CreditHold.objects.filter(pk=stale.id).update(expires_at=timezone.now() - timedelta(hours=1))

    found = {(d.check, d.subject) for d in reconcile()}
    assert ("run", f"run {unpaid.id}") in found
    assert ("run", f"run {failed.id}") in found
    assert ("run", f"run {good.id}") in found
    assert ("hold", f"hold {stale.id}") in found


# --- refused before credits are held -----------------------------------------------------------------------------


def test_master_refuses_predictably_too_big_work_with_413_before_holding(user, settings):
    settings.AGENT_MASTER_MAX_PAIRS = 1_000
    ledger.grant(user_id=user.id, amount=500, reason="seed")
    rows = "\n".join(f"Person {i},same@example.com" for i in range(100))  # one block: 4,950 pairs
    body = {"tool_configuration": {"max_block_size": 300}, "data": {"csv": "name,email\n" + rows}}

    response = bearer_client(user).post("/api/master-my-data", body, format="json")

    assert response.status_code == 413, response.content
    payload = response.json()
    assert payload["error_code"] == "PAYLOAD_TOO_LARGE" and "AGENT_MASTER_MAX_PAIRS" in payload["detail"]
    assert payload["pairs"] >= 4_950 and payload["max_pairs"] == 1_000
    assert balances(user) == (500, 0) and not AgentRun.objects.exists()

    narrower = {"tool_configuration": {"max_block_size": 10}, "data": body["data"]}
    assert bearer_client(user).post("/api/master-my-data", narrower, format="json").status_code == 200


def test_time_and_memory_limits_are_reported_and_nothing_is_charged(user, settings, monkeypatch):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    client = bearer_client(user)
    settings.AGENT_RUN_TIMEOUT_SECONDS = 1
    monkeypatch.setitem(runner.TOOLS, PROFILE, "tests.sandbox_tools:sleepy")
    slow = client.post("/api/profile-my-data", BODY, format="json")
    assert slow.status_code == 422 and slow.json()["error_code"] == "AGENT_RUN_FAILED"
    assert "1 s" in slow.json()["detail"] and "No credits were charged" in slow.json()["detail"]

    settings.AGENT_RUN_TIMEOUT_SECONDS = 30
    settings.AGENT_RUN_MAX_MEMORY_MB = 100
    monkeypatch.setitem(runner.TOOLS, PROFILE, "tests.sandbox_tools:hog")
    hungry = client.post("/api/profile-my-data", BODY, format="json")
    assert hungry.status_code == 422 and "100 MB" in hungry.json()["detail"]
    assert balances(user) == (100, 0)
    assert not CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()
    assert Counter(AgentRun.objects.values_list("status", flat=True)) == {RunStatus.FAILED: 2}
