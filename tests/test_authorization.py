"""Authorization matrix: every endpoint × (anonymous, owner, other user, staff without permission, finance)."""

import pytest
from django.db.models import Sum
from django.test import Client

from billing import ledger
from billing.models import CreditHold, CreditTransaction, Wallet
from tests.conftest import bearer_client
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]

ROLES = ("anonymous", "owner", "other_user", "staff_without_permission", "finance")
CSV = {"tool_configuration": {}, "data": {"csv": "a\n1\n"}}
ALL_OK = dict.fromkeys(ROLES, 200)
SIGNED_IN = {"anonymous": 401, "owner": 200, "other_user": 200, "staff_without_permission": 200, "finance": 200}
OWN_OBJECT = {"anonymous": 401, "owner": 200, "other_user": 404, "staff_without_permission": 404, "finance": 404}
FINANCE_ONLY = {"anonymous": 401, "owner": 403, "other_user": 403, "staff_without_permission": 403, "finance": 200}

# (method, path template, body, expected status per role)
API = [
    ("get", "/health", None, ALL_OK),
    ("get", "/api/schema", None, ALL_OK),
    ("get", "/api/docs", None, ALL_OK),
    ("get", "/billing/packages", None, ALL_OK),
    ("get", "/billing/agent-costs", None, ALL_OK),
    ("get", "/auth/me", None, SIGNED_IN),
    ("get", "/billing/wallet", None, SIGNED_IN),
    ("get", "/billing/transactions", None, SIGNED_IN),
    ("get", "/billing/transactions/{transaction}", None, OWN_OBJECT),
    ("get", "/api/agents/runs", None, SIGNED_IN),
    ("get", "/api/agents/runs/{run}", None, OWN_OBJECT),
    ("post", "/api/profile-my-data", CSV, SIGNED_IN),
    (
        "post",
        "/billing/holds",
        {"agent_id": "profile-my-data"},
        {**SIGNED_IN, "owner": 201, "other_user": 201, "staff_without_permission": 201, "finance": 201},
    ),
    (
        "post",
        "/billing/charges",
        {"agent_id": "profile-my-data"},
        {**SIGNED_IN, "owner": 201, "other_user": 201, "staff_without_permission": 201, "finance": 201},
    ),
    ("get", "/billing/holds/{hold}", None, OWN_OBJECT),
    ("post", "/billing/holds/{hold}/capture", None, OWN_OBJECT),
    ("post", "/billing/holds/{hold}/release", None, OWN_OBJECT),
    (
        "post",
        "/billing/checkout",
        {"package_id": "no-such-package"},
        {**SIGNED_IN, "owner": 404, "other_user": 404, "staff_without_permission": 404, "finance": 404},
    ),
    ("post", "/billing/admin/grant", {"user_id": "{owner_id}", "credits": 5, "reason": "matrix"}, FINANCE_ONLY),
    ("post", "/billing/admin/seed-costs", {}, FINANCE_ONLY),
    ("post", "/billing/admin/settle-shortfall", {"user_id": "{owner_id}", "reason": "matrix"}, FINANCE_ONLY),
    ("get", "/billing/limits", None, SIGNED_IN),
    ("put", "/billing/limits", {"daily_limit_credits": 100, "monthly_limit_credits": None}, SIGNED_IN),
    (
        "put",
        "/billing/admin/limits",
        {"user_id": "{owner_id}", "daily_limit_credits": 1000, "monthly_limit_credits": None},
        FINANCE_ONLY,
    ),
    ("get", "/billing/balance-alerts", None, SIGNED_IN),
    ("put", "/billing/balance-alerts", {"low_balance_threshold_credits": 50}, SIGNED_IN),
    ("get", "/billing/auto-recharge", None, SIGNED_IN),
    (
        "put",
        "/billing/auto-recharge",
        {"enabled": False, "threshold_credits": 100, "package_id": "pack_1k", "monthly_limit_cents": 5000},
        SIGNED_IN,
    ),
    # No card is saved: 404 for every signed-in caller (each sees only their own card).
    ("get", "/billing/payment-method", None, {**SIGNED_IN, **dict.fromkeys(ROLES[1:], 404)}),
    ("delete", "/billing/payment-method", None, {**SIGNED_IN, **dict.fromkeys(ROLES[1:], 404)}),
    # Stripe is unreachable in this test: 503 once authenticated.
    ("post", "/billing/payment-method/setup", None, {**SIGNED_IN, **dict.fromkeys(ROLES[1:], 503)}),
    ("post", "/billing/webhook", {}, dict.fromkeys(ROLES, 400)),  # only a Stripe signature authenticates
    ("post", "/auth/logout", {"refresh": "not-a-token"}, dict.fromkeys(ROLES, 400)),  # the token is the proof
    (
        "post",
        "/auth/password",
        {"old_password": "not-it", "new_password": "battery-staple-7"},
        {**SIGNED_IN, "owner": 400, "other_user": 400, "staff_without_permission": 400, "finance": 400},
    ),
]

ADMIN = [
    ("get", "/admin/reports/", {"anonymous": 302, "owner": 302, "staff_without_permission": 403, "finance": 200}),
    ("get", "/admin/revenue/", {"anonymous": 302, "owner": 302, "staff_without_permission": 403, "finance": 200}),
    (
        "get",
        "/admin/billing/credittransaction/export/",
        {"anonymous": 302, "owner": 302, "staff_without_permission": 403, "finance": 200},
    ),
    (
        "post",
        "/admin/users/user/{owner_id}/credits/grant/",
        {"anonymous": 302, "owner": 302, "staff_without_permission": 403, "finance": 302},
    ),
]


@pytest.fixture
def world(staff, staff_without_permissions):
    owner, other = UserFactory(), UserFactory()
    people = {
        "owner": owner,
        "other_user": other,
        "staff_without_permission": staff_without_permissions,
        "finance": staff,
    }
    for person in people.values():
        ledger.grant(user_id=person.id, amount=1000, reason="matrix")
    run_id = bearer_client(owner).post("/api/profile-my-data", CSV, format="json").json()["run_id"]
    hold = ledger.hold(user_id=owner.id, amount=10, agent_id="profile-my-data").hold
    return {
        "people": people,
        "ids": {
            "owner_id": owner.id,
            "transaction": CreditTransaction.objects.filter(wallet__user=owner).first().id,
            "run": run_id,
            "hold": hold.id,
        },
    }


def _fill(value, ids):
    if isinstance(value, str):
        formatted = value.format(**ids)
        return int(formatted) if value.startswith("{") and formatted.isdigit() else formatted
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path", "body", "expected"), API, ids=[f"{m} {p}" for m, p, *_ in API])
def test_api_authorization(world, role, method, path, body, expected):
    client = Client() if role == "anonymous" else bearer_client(world["people"][role])
    url = path.format(**world["ids"])
    kwargs = {"data": _fill(body, world["ids"]), "format": "json"} if body is not None else {}
    if role == "anonymous":
        kwargs = {"data": _fill(body, world["ids"]), "content_type": "application/json"} if body is not None else {}
    before = _ledger_state()
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == expected[role], response.content[:300]
    if response.status_code >= 400:
        assert _ledger_state() == before, "a refused request moved credits"


def _ledger_state() -> tuple:
    """Everything a request could move: balances, held credits, shortfalls, ledger rows, holds."""
    totals = Wallet.objects.aggregate(
        balance=Sum("balance_credits"), held=Sum("held_credits"), owed=Sum("shortfall_credits")
    )
    return (
        tuple(totals.values()),
        CreditTransaction.objects.count(),
        tuple(CreditHold.objects.order_by("id").values_list("id", "status")),
    )


@pytest.mark.parametrize("role", ["anonymous", "owner", "staff_without_permission", "finance"])
@pytest.mark.parametrize(("method", "path", "expected"), ADMIN, ids=[f"{m} {p}" for m, p, _ in ADMIN])
def test_admin_authorization(world, role, method, path, expected):
    client = Client()
    if role != "anonymous":
        client.force_login(world["people"][role])
    url = path.format(**world["ids"])
    data = {"credits": 5, "reason": "matrix", "idempotency_key": "matrix"} if method == "post" else None
    before = _ledger_state()
    response = getattr(client, method)(url, data) if data else getattr(client, method)(url)
    assert response.status_code == expected[role]
    if role != "finance":  # refused (403) or sent to the log-in page (302)
        assert _ledger_state() == before, "a refused request moved credits"
