import time
from collections import Counter
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from agents import runner
from agents.models import AgentCost, AgentRun, RunStatus
from billing import ledger
from billing.models import CreditHold, CreditLot, CreditTransaction, HoldStatus, TransactionKind, Wallet
from tests.concurrency import in_threads
from tests.conftest import bearer_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]

BODY = {"tool_configuration": {}, "data": {"csv": "a,b\n1,x\n2,y\n"}}


def wallet(user) -> Wallet:
    return Wallet.objects.get(user=user)


# --- runs API ------------------------------------------------------------------------------


def test_runs_are_listed_with_receipts_and_private(user_client, user, other_user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    run_id = user_client.post("/api/profile-my-data", BODY, format="json").json()["run_id"]

    listing = user_client.get("/api/agents/runs").json()
    assert listing["count"] == 1
    item = listing["results"][0]
    assert item["run_id"] == run_id and item["status"] == "succeeded"
    lot_id = CreditLot.objects.get(wallet__user=user).id
    assert item["receipt"] == {
        "run_id": run_id,
        "credits_charged": 25,
        "balance_after": 75,
        "funded_by": [{"lot_id": lot_id, "category": "promotional", "credits": 25}],
    }
    assert item["result_summary"]["row_count"] == 2 and "result" not in item

    detail = user_client.get(f"/api/agents/runs/{run_id}").json()
    assert detail["result"]["row_count"] == 2

    assert bearer_client(other_user).get(f"/api/agents/runs/{run_id}").status_code == 404
    assert user_client.get("/api/agents/runs", {"status": "failed"}).json()["count"] == 0
    assert user_client.get("/api/agents/runs/not-a-uuid").status_code == 404


# --- time limit -------------------------------------------------------------------------------


def test_a_run_over_its_time_limit_fails_and_releases_the_hold(user_client, user, settings, monkeypatch):
    settings.AGENT_RUN_TIMEOUT_SECONDS = 0.5
    monkeypatch.setitem(runner.TOOLS, "profile-my-data", "tests.sandbox_tools:sleepy")  # busy for a minute
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    started = time.monotonic()
    response = user_client.post("/api/profile-my-data", BODY, format="json")

    assert time.monotonic() - started < 2.5
    assert response.status_code == 422 and response.json()["status"] == "failed"
    assert "ToolTimedOut" in AgentRun.objects.get().error
    assert (wallet(user).balance_credits, wallet(user).held_credits) == (100, 0)
    assert not CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()


# --- asynchronous runs (eager, no broker) ----------------------------------------------------------


@pytest.mark.parametrize("how", ["prefer-header", "query"])
def test_an_async_run_answers_202_then_completes(user_client, user, django_capture_on_commit_callbacks, how):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    kwargs = {"HTTP_PREFER": "respond-async"} if how == "prefer-header" else {}
    path = "/api/profile-my-data" + ("?async=true" if how == "query" else "")
    with django_capture_on_commit_callbacks(execute=True):
        response = user_client.post(path, BODY, format="json", **kwargs)
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "queued" and body["receipt"]["credits_charged"] == 0
        assert response.headers["Location"] == f"/api/agents/runs/{body['run_id']}"
        assert wallet(user).held_credits == 25  # held at submit

    run = user_client.get(f"/api/agents/runs/{body['run_id']}").json()
    assert run["status"] == "succeeded" and run["receipt"]["credits_charged"] == 25
    assert (wallet(user).balance_credits, wallet(user).held_credits) == (75, 0)
    assert AgentRun.objects.get().input_blob is None  # input dropped once the run ended


def test_an_async_run_with_too_few_credits_is_402_at_submit(user_client):
    response = user_client.post("/api/profile-my-data", BODY, format="json", HTTP_PREFER="respond-async")
    assert response.status_code == 402 and not AgentRun.objects.exists()


# --- expiry -----------------------------------------------------------------------------------------


def test_expire_holds_releases_a_stale_hold_and_expires_its_run(user, django_capture_on_commit_callbacks):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    outcome = runner.submit_run(
        user_id=user.id,
        agent_id="profile-my-data",
        tool_configuration={"top_values": 5, "high_null_ratio": 0.5, "categorical_max_distinct": 20},
        dataset=runner.Dataset(columns=["a"], rows=[{"a": "1"}], source_format="csv"),
        run_async=True,
    )  # queued: its task is never started (on_commit callbacks not executed)
    CreditHold.objects.filter(pk=outcome.run.hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    fresh = ledger.hold(user_id=user.id, amount=10, agent_id="x").hold

    out = StringIO()
    call_command("expire_holds", stdout=out)

    assert "Expired 1 hold(s)." in out.getvalue()
    assert CreditHold.objects.get(pk=outcome.run.hold_id).status == HoldStatus.EXPIRED
    assert CreditHold.objects.get(pk=fresh.pk).status == HoldStatus.PENDING
    run = AgentRun.objects.get(pk=outcome.run.pk)
    assert run.status == RunStatus.EXPIRED and run.credits_charged == 0
    assert (wallet(user).balance_credits, wallet(user).held_credits) == (100, 10)

    # A worker that picks the run up late neither runs nor charges it.
    assert runner.execute_stored_run(run_id=str(run.pk)).status == RunStatus.EXPIRED
    assert wallet(user).balance_credits == 100


def test_an_expired_hold_cannot_be_captured(user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    held = ledger.hold(user_id=user.id, amount=10, agent_id="x", expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ledger.HoldExpired):
        ledger.capture(hold_id=held.hold.id)
    assert wallet(user).balance_credits == 100


# --- metering holds API ------------------------------------------------------------------------------


def test_hold_capture_release_lifecycle(user_client, user):
    ledger.grant(user_id=user.id, amount=200, reason="seed")
    created = user_client.post("/billing/holds", {"agent_id": "forecast-my-data"}, format="json")
    assert created.status_code == 201
    hold = created.json()
    assert (hold["agent_id"], hold["credits"], hold["status"]) == ("forecast-my-data", 120, "pending")
    assert hold["expires_at"]
    assert wallet(user).held_credits == 120

    captured = user_client.post(f"/billing/holds/{hold['hold_id']}/capture")
    assert captured.status_code == 200
    assert captured.json()["credits_charged"] == 120 and captured.json()["balance_after"] == 80

    twice = user_client.post(f"/billing/holds/{hold['hold_id']}/capture")
    assert twice.status_code == 409 and twice.json()["error_code"] == "HOLD_NOT_PENDING"
    late_release = user_client.post(f"/billing/holds/{hold['hold_id']}/release")
    assert late_release.status_code == 409

    second = user_client.post("/billing/holds", {"agent_id": "validate-my-data"}, format="json").json()
    released = user_client.post(f"/billing/holds/{second['hold_id']}/release")
    assert released.status_code == 200 and released.json()["status"] == "released"
    after_release = user_client.post(f"/billing/holds/{second['hold_id']}/capture")
    assert after_release.status_code == 409
    assert (wallet(user).balance_credits, wallet(user).held_credits) == (80, 0)
    assert CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).count() == 1


def test_holds_are_private_idempotent_and_refused_when_short(user_client, user, other_user):
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    first = user_client.post(
        "/billing/holds", {"agent_id": "document-my-data"}, format="json", HTTP_IDEMPOTENCY_KEY="h1"
    )
    again = user_client.post(
        "/billing/holds", {"agent_id": "document-my-data"}, format="json", HTTP_IDEMPOTENCY_KEY="h1"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["hold_id"] == again.json()["hold_id"]
    assert wallet(user).held_credits == 40

    short = user_client.post("/billing/holds", {"agent_id": "document-my-data"}, format="json")
    assert short.status_code == 402 and short.json()["available"] == 10

    stranger = bearer_client(other_user)
    assert stranger.post(f"/billing/holds/{first.json()['hold_id']}/capture").status_code == 404
    assert stranger.get(f"/billing/holds/{first.json()['hold_id']}").status_code == 404
    unknown = user_client.post("/billing/holds", {"agent_id": "no-such-agent"}, format="json")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "AGENT_UNAVAILABLE"
    assert user_client.post("/billing/holds", {}, format="json").status_code == 400


def test_one_step_charge_takes_the_current_cost_once_per_key_and_never_overdraws(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    first = user_client.post(
        "/billing/charges", {"agent_id": "document-my-data"}, format="json", HTTP_IDEMPOTENCY_KEY="c1"
    )
    again = user_client.post(
        "/billing/charges", {"agent_id": "document-my-data"}, format="json", HTTP_IDEMPOTENCY_KEY="c1"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert first.json()["agent_id"] == "document-my-data"
    assert (first.json()["credits_charged"], first.json()["balance_after"]) == (40, 60)
    row = CreditTransaction.objects.get(pk=first.json()["transaction_id"])
    assert (row.kind, row.amount, row.agent_id) == (TransactionKind.CHARGE, -40, "document-my-data")

    AgentCost.objects.filter(agent_id="document-my-data").update(cost_credits=45)
    second = user_client.post("/billing/charges", {"agent_id": "document-my-data"}, format="json")
    assert (second.status_code, second.json()["credits_charged"], second.json()["balance_after"]) == (201, 45, 15)
    short = user_client.post("/billing/charges", {"agent_id": "document-my-data"}, format="json")
    assert short.status_code == 402
    assert (short.json()["error_code"], short.json()["required"], short.json()["available"]) == (
        "BILLING_INSUFFICIENT_CREDITS",
        45,
        15,
    )
    reused = user_client.post(
        "/billing/charges", {"agent_id": "profile-my-data"}, format="json", HTTP_IDEMPOTENCY_KEY="c1"
    )
    assert reused.status_code == 409 and reused.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    unknown = user_client.post("/billing/charges", {"agent_id": "no-such-agent"}, format="json")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "AGENT_UNAVAILABLE"
    assert user_client.post("/billing/charges", {"agent_id": 7}, format="json").status_code == 400
    AgentCost.objects.filter(agent_id="document-my-data").update(is_active=False)
    switched_off = user_client.post("/billing/charges", {"agent_id": "document-my-data"}, format="json")
    assert switched_off.status_code == 404 and switched_off.json()["error_code"] == "AGENT_UNAVAILABLE"
    assert user_client.post("/billing/holds", {"agent_id": "document-my-data"}, format="json").status_code == 404
    assert wallet(user).balance_credits == 15
    assert CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).count() == 2


def test_every_catalogue_agent_can_be_metered(user_client, user):
    from agents.catalogue import DEFAULT_AGENTS

    ledger.grant(user_id=user.id, amount=10_000, reason="seed")
    for entry in DEFAULT_AGENTS:
        hold = user_client.post("/billing/holds", {"agent_id": entry.agent_id}, format="json").json()
        assert user_client.post(f"/billing/holds/{hold['hold_id']}/capture").json()["credits_charged"] == (
            entry.cost_credits
        )
    assert wallet(user).balance_credits == 10_000 - sum(e.cost_credits for e in DEFAULT_AGENTS)


# --- concurrency on MariaDB ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_4k_concurrent_runs_on_a_wallet_for_k_runs_exactly_k_succeed(user, figures):
    k, cost = 12, 25  # profile-my-data costs 25
    ledger.grant(user_id=user.id, amount=k * cost, reason="exactly K runs")

    def run(_):
        return bearer_client(user).post("/api/profile-my-data", BODY, format="json").status_code

    outcomes = Counter(in_threads(list(range(4 * k)), run))

    figures(f"{4 * k} concurrent agent runs for a wallet funded for {k}: {dict(outcomes)}")
    assert outcomes == {200: k, 402: 3 * k}
    final = wallet(user)
    assert (final.balance_credits, final.held_credits) == (0, 0)
    assert final.balance_credits == sum(CreditTransaction.objects.filter(wallet=final).values_list("amount", flat=True))
    assert CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).count() == k
    assert AgentRun.objects.filter(status=RunStatus.SUCCEEDED).count() == k
