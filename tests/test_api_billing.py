import pytest
from django.db import OperationalError

from agents.models import AgentCost
from billing import ledger
from billing.models import CreditTransaction, TransactionKind, Wallet

pytestmark = pytest.mark.django_db


# --- /health -------------------------------------------------------------------


def test_health_reports_the_database(anon):
    response = anon.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_health_is_503_when_the_database_is_unreachable(anon, monkeypatch):
    from django.db import connection

    def unreachable():
        raise OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'")

    monkeypatch.setattr(connection, "cursor", unreachable)
    response = anon.get("/health")
    assert response.status_code == 503
    assert response.json()["database"] == "error"


# --- /billing/packages and /billing/agent-costs ----------------------------------


def test_packages_are_served_from_the_packages_file(anon, settings):
    import json

    expected = json.loads(settings.BILLING_PACKAGES_FILE.read_text())
    response = anon.get("/billing/packages")
    assert response.status_code == 200
    assert response.json()["packages"] == [{"expires_in_days": None, **package} for package in expected]
    assert len(expected) >= 3


def test_agent_costs_lists_the_22_seeded_agents(anon, agent_costs):
    response = anon.get("/billing/agent-costs")
    assert response.status_code == 200
    agents = response.json()["agents"]
    assert len(agents) == 22
    assert {"profile-my-data", "clean-my-data", "master-my-data"} <= {a["agent_id"] for a in agents}
    for agent in agents:
        assert set(agent) == {"agent_id", "name", "description", "cost_credits"}
        assert 20 <= agent["cost_credits"] <= 150


def test_agent_costs_hides_inactive_agents(anon, agent_costs):
    AgentCost.objects.filter(agent_id="govern-my-data").update(is_active=False)
    ids = {a["agent_id"] for a in anon.get("/billing/agent-costs").json()["agents"]}
    assert "govern-my-data" not in ids and len(ids) == 21


# --- /billing/wallet and /billing/transactions -------------------------------------


def test_a_new_user_gets_an_empty_wallet(user_client, user):
    response = user_client.get("/billing/wallet")
    assert response.status_code == 200
    body = response.json()
    assert body["balance_credits"] == 0 and body["transactions"] == []
    assert body["held_credits"] == 0 and body["available_credits"] == 0
    assert Wallet.objects.filter(user=user).count() == 1


def test_wallet_shows_balance_hold_and_latest_transactions(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ledger.hold(user_id=user.id, amount=30, agent_id="a")
    body = user_client.get("/billing/wallet").json()
    assert (body["balance_credits"], body["held_credits"], body["available_credits"]) == (100, 30, 70)
    assert [t["amount"] for t in body["transactions"]] == [100]


def test_wallet_and_transactions_need_a_jwt(anon):
    for path in ("/billing/wallet", "/billing/transactions"):
        response = anon.get(path)
        assert response.status_code == 401
        assert response.json()["error_code"] == "AUTHENTICATION_REQUIRED"


def test_transactions_are_paginated_filtered_and_private(user_client, user, other_user):
    for i in range(1, 8):
        ledger.grant(user_id=user.id, amount=i, reason=f"g{i}")
    ledger.charge(user_id=user.id, amount=3, agent_id="profile-my-data")
    ledger.charge(user_id=user.id, amount=2, agent_id="clean-my-data")
    ledger.grant(user_id=other_user.id, amount=999, reason="not yours")

    page = user_client.get("/billing/transactions", {"page_size": 4}).json()
    assert page["count"] == 9 and len(page["results"]) == 4 and page["next"]
    assert page["results"][0]["agent_id"] == "clean-my-data"  # newest first

    charges = user_client.get("/billing/transactions", {"kind": "charge"}).json()
    assert [t["amount"] for t in charges["results"]] == [-2, -3]
    by_agent = user_client.get("/billing/transactions", {"agent_id": "profile-my-data"}).json()
    assert [t["amount"] for t in by_agent["results"]] == [-3]
    future = user_client.get("/billing/transactions", {"created_after": "2999-01-01T00:00:00Z"}).json()
    assert future["count"] == 0

    other_row = CreditTransaction.objects.get(wallet__user=other_user)
    assert user_client.get(f"/billing/transactions/{other_row.id}").status_code == 404


def test_transactions_refuse_a_bad_filter(user_client):
    response = user_client.get("/billing/transactions", {"kind": "bogus"})
    assert response.status_code == 400
    assert "kind" in response.json()["errors"]


# --- /billing/admin/grant -------------------------------------------------------------


def test_staff_grant_returns_the_new_balance(staff_client, user, staff):
    response = staff_client.post(
        "/billing/admin/grant", {"user_id": user.id, "credits": 1000, "reason": "welcome"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["success"] is True and response.json()["new_balance"] == 1000
    row = CreditTransaction.objects.get(wallet__user=user)
    assert (row.kind, row.amount, row.actor_id, row.reason) == (TransactionKind.GRANT, 1000, staff.id, "welcome")


def test_staff_negative_grant_debits_but_never_below_zero(staff_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ok = staff_client.post("/billing/admin/grant", {"user_id": user.id, "credits": -40, "reason": "fix"}, format="json")
    assert ok.status_code == 200 and ok.json()["new_balance"] == 60

    refused = staff_client.post(
        "/billing/admin/grant", {"user_id": user.id, "credits": -61, "reason": "too much"}, format="json"
    )
    assert refused.status_code == 402
    assert refused.json()["error_code"] == "BILLING_INSUFFICIENT_CREDITS"
    assert refused.json()["available"] == 60
    assert Wallet.objects.get(user=user).balance_credits == 60
    assert CreditTransaction.objects.filter(wallet__user=user).count() == 2


@pytest.mark.parametrize(
    "credits",
    ["100", 10.5, 100.0, 0, True, None, 1_000_001, -1_000_001, 10**30, [1], {"n": 1}],
    ids=repr,
)
def test_staff_grant_refuses_bad_credits(staff_client, user, credits):
    response = staff_client.post(
        "/billing/admin/grant", {"user_id": user.id, "credits": credits, "reason": "x"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error_code"] == "VALIDATION_ERROR"
    assert "credits" in response.json()["errors"]
    assert not CreditTransaction.objects.exists()


def test_staff_grant_respects_the_configured_maximum(staff_client, user, settings):
    settings.BILLING_MAX_GRANT = 500
    response = staff_client.post(
        "/billing/admin/grant", {"user_id": user.id, "credits": 501, "reason": "x"}, format="json"
    )
    assert response.status_code == 400


@pytest.mark.parametrize("body", [{"credits": 5}, {"credits": 5, "reason": ""}, {"credits": 5, "reason": "   "}])
def test_staff_grant_requires_a_reason(staff_client, user, body):
    response = staff_client.post("/billing/admin/grant", {"user_id": user.id, **body}, format="json")
    assert response.status_code == 400
    assert "reason" in response.json()["errors"]


def test_staff_grant_to_an_unknown_user_is_404(staff_client):
    response = staff_client.post(
        "/billing/admin/grant", {"user_id": 987654, "credits": 5, "reason": "x"}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["error_code"] == "USER_NOT_FOUND"
    assert not Wallet.objects.filter(user_id=987654).exists()


def test_staff_grant_replays_an_idempotency_key(staff_client, user):
    body = {"user_id": user.id, "credits": 250, "reason": "promo"}
    first = staff_client.post("/billing/admin/grant", body, format="json", HTTP_IDEMPOTENCY_KEY="grant-1")
    again = staff_client.post("/billing/admin/grant", body, format="json", HTTP_IDEMPOTENCY_KEY="grant-1")
    assert first.json() == again.json()
    assert Wallet.objects.get(user=user).balance_credits == 250
    conflict = staff_client.post(
        "/billing/admin/grant", {**body, "credits": 1}, format="json", HTTP_IDEMPOTENCY_KEY="grant-1"
    )
    assert conflict.status_code == 409
    assert conflict.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"


def test_admin_endpoints_are_for_staff_only(user_client, anon, user):
    body = {"user_id": user.id, "credits": 5, "reason": "x"}
    assert anon.post("/billing/admin/grant", body, format="json").status_code == 401
    forbidden = user_client.post("/billing/admin/grant", body, format="json")
    assert forbidden.status_code == 403
    assert forbidden.json()["error_code"] == "PERMISSION_DENIED"
    assert user_client.post("/billing/admin/seed-costs", {}, format="json").status_code == 403
    assert not CreditTransaction.objects.exists()


@pytest.mark.parametrize("who", ["staff_without_permissions", "finance_viewer"])
def test_staff_without_the_finance_permission_cannot_grant(request, client_for, user, who):
    client = client_for(request.getfixturevalue(who))
    body = {"user_id": user.id, "credits": 5, "reason": "x"}
    assert client.post("/billing/admin/grant", body, format="json").status_code == 403
    assert client.post("/billing/admin/seed-costs", {}, format="json").status_code == 403
    assert (
        client.post("/billing/admin/settle-shortfall", {"user_id": user.id, "reason": "x"}, format="json").status_code
        == 403
    )
    assert not CreditTransaction.objects.exists()


# --- /billing/admin/seed-costs ----------------------------------------------------------


def test_seed_costs_keeps_edited_prices_unless_reset(staff_client, agent_costs):
    AgentCost.objects.filter(agent_id="clean-my-data").update(cost_credits=99)
    AgentCost.objects.filter(agent_id="master-my-data").delete()

    report = staff_client.post("/billing/admin/seed-costs", {}, format="json").json()
    assert report == {"created": 1, "updated": 0, "kept": 1}
    assert AgentCost.objects.get(agent_id="clean-my-data").cost_credits == 99
    assert AgentCost.objects.count() == 22

    report = staff_client.post("/billing/admin/seed-costs", {"reset": True}, format="json").json()
    assert report == {"created": 0, "updated": 1, "kept": 0}
    assert AgentCost.objects.get(agent_id="clean-my-data").cost_credits == 40


def test_seed_costs_refuses_a_non_boolean_reset(staff_client):
    response = staff_client.post("/billing/admin/seed-costs", {"reset": "maybe"}, format="json")
    assert response.status_code == 400
    assert "reset" in response.json()["errors"]
