"""Every documented operation, called for real, answers exactly as the OpenAPI schema says: its
status code is documented, and its body validates against that status's schema (schemathesis's
validator; the fuzzing side is test_schema_conformance). A frontend's generated client relies on it."""

import io
import json

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from werkzeug.test import Client

from agents import runner
from billing import ledger
from billing.models import SavedPaymentMethod
from tests.stripe_helpers import checkout_event, signed
from users.models import User

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs", "wsgi_keeps_test_connection")]

CSV = "name,email,age\nAda,ada@example.com,36\nAda,ADA@example.com ,36\nBob,bob@example.com,\n"


def _schema() -> schemathesis.BaseSchema:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return schemathesis.openapi.from_dict(json.loads(OpenApiJsonRenderer().render(generated, renderer_context={})))


class Api:
    """Calls the WSGI app as a client would and checks each answer against the schema."""

    def __init__(self, schema):
        self.schema = schema
        self.client = Client(get_wsgi_application())
        self.checked: set[tuple[str, str]] = set()
        self.token: str | None = None

    def call(self, method: str, path: str, *, expect: int, template: str | None = None, token=None, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        token = self.token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        body = response.get_data(as_text=True)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {body[:500]}"
        operation = self.schema[template or path][method]
        documented = operation.definition.raw["responses"]
        assert str(expect) in documented, f"{method} {template or path} answers {expect}, undocumented"
        if body:
            assert "content" in documented[str(expect)], f"{method} {template or path} {expect}: body without schema"
        operation.validate_response(response)  # raises with the differences
        self.checked.add((method, template or path))
        return response.get_json(silent=True)


@pytest.fixture
def api():
    return Api(_schema())


def _token(api, email: str, password: str) -> str:
    pair = api.call("POST", "/auth/token", json={"email": email, "password": password}, expect=200)
    return pair["access"]


def test_every_documented_operation_answers_as_its_schema_says(api, staff, fake_stripe, monkeypatch, settings):
    settings.FINANCE_APPROVAL_THRESHOLD = 10_000
    staff.set_password("staff-password-9")
    staff.save()
    staff_token = _token(api, staff.email, "staff-password-9")

    # Public reads.
    api.call("GET", "/health", expect=200)
    api.call("GET", "/billing/packages", expect=200)
    api.call("GET", "/billing/agent-costs", expect=200)

    # An account, its tokens, and errors on the way.
    api.call("POST", "/auth/register", json={"email": "buyer@example.com", "password": "x"}, expect=400)
    user = api.call(
        "POST", "/auth/register", json={"email": "buyer@example.com", "password": "long-pass-1"}, expect=201
    )
    api.call("POST", "/auth/token", json={"email": "buyer@example.com", "password": "wrong"}, expect=401)
    pair = api.call("POST", "/auth/token", json={"email": "buyer@example.com", "password": "long-pass-1"}, expect=200)
    pair = api.call("POST", "/auth/token/refresh", json={"refresh": pair["refresh"]}, expect=200)
    api.token = pair["access"]
    api.call("GET", "/auth/me", expect=200)
    api.call("GET", "/billing/wallet", token="", expect=401)

    # Staff money: a grant, one waiting for approval, a refusal, a bad request.
    grant = {"user_id": user["id"], "credits": 5_000, "reason": "welcome"}
    api.call("POST", "/billing/admin/grant", json=grant, token=staff_token, expect=200)
    big = {**grant, "credits": 50_000}
    api.call("POST", "/billing/admin/grant", json=big, token=staff_token, expect=202)
    api.call("POST", "/billing/admin/grant", json=grant, expect=403)
    api.call("POST", "/billing/admin/grant", json={**grant, "credits": 0}, token=staff_token, expect=400)
    missing = {**grant, "user_id": 10**9}
    api.call("POST", "/billing/admin/grant", json=missing, token=staff_token, expect=404)
    api.call("POST", "/billing/admin/seed-costs", json={}, token=staff_token, expect=200)

    # Reads of the ledger.
    wallet = api.call("GET", "/billing/wallet", expect=200)
    row = wallet["transactions"][0]["id"]
    api.call("GET", "/billing/transactions?kind=grant&page_size=5", template="/billing/transactions", expect=200)
    api.call("GET", f"/billing/transactions/{row}", template="/billing/transactions/{id}", expect=200)

    # One-step metering, with a replay and a conflict.
    key = {"Idempotency-Key": "charge-1"}
    api.call("POST", "/billing/charges", json={"agent_id": "profile-my-data"}, headers=key, expect=201)
    api.call("POST", "/billing/charges", json={"agent_id": "profile-my-data"}, headers=key, expect=200)
    api.call("POST", "/billing/charges", json={"agent_id": "clean-my-data"}, headers=key, expect=409)
    api.call("POST", "/billing/charges", json={"agent_id": "no-such-agent"}, expect=404)

    # Holds: create (and replay), read, capture (twice), release.
    hold_key = {"Idempotency-Key": "hold-1"}
    hold = api.call("POST", "/billing/holds", json={"agent_id": "profile-my-data"}, headers=hold_key, expect=201)
    api.call("POST", "/billing/holds", json={"agent_id": "profile-my-data"}, headers=hold_key, expect=200)
    hold_path = f"/billing/holds/{hold['hold_id']}"
    api.call("GET", hold_path, template="/billing/holds/{hold_id}", expect=200)
    api.call("GET", "/billing/holds/999999", template="/billing/holds/{hold_id}", expect=404)
    api.call("POST", f"{hold_path}/capture", template="/billing/holds/{hold_id}/capture", expect=200)
    api.call("POST", f"{hold_path}/capture", template="/billing/holds/{hold_id}/capture", expect=409)
    other = api.call("POST", "/billing/holds", json={"agent_id": "profile-my-data"}, expect=201)
    release = "/billing/holds/{hold_id}/release"
    api.call("POST", f"/billing/holds/{other['hold_id']}/release", template=release, expect=200)

    # The data agents: a run of each, an upload, bad options, a failed run.
    api.call("POST", "/api/profile-my-data", json={"data": {"csv": CSV}}, expect=200)
    rows = [{"name": " ada ", "email": "ADA@example.com"}, {"name": "bob", "email": "bob@example.com"}]
    api.call(
        "POST",
        "/api/clean-my-data",
        json={"tool_configuration": {"case": {"name": "title"}}, "data": {"rows": rows}},
        expect=200,
    )
    options = {"match_columns": ["name", "email"], "threshold": 0.8}
    run = api.call(
        "POST", "/api/master-my-data", json={"tool_configuration": options, "data": {"csv": CSV}}, expect=200
    )
    upload = {"file": (io.BytesIO(CSV.encode()), "people.csv"), "tool_configuration": "{}"}
    api.call("POST", "/api/profile-my-data", data=upload, content_type="multipart/form-data", expect=200)
    bad = {"tool_configuration": {"top_values": "many"}, "data": {"csv": CSV}}
    api.call("POST", "/api/profile-my-data", json=bad, expect=400)
    monkeypatch.setitem(runner.TOOLS, "profile-my-data", "tests.sandbox_tools:boom")
    api.call("POST", "/api/profile-my-data", json={"data": {"csv": CSV}}, expect=422)
    api.call("GET", "/api/agents/runs?status=succeeded", template="/api/agents/runs", expect=200)
    api.call("GET", f"/api/agents/runs/{run['run_id']}", template="/api/agents/runs/{id}", expect=200)

    # A wallet that cannot pay.
    poor = api.call("POST", "/auth/register", json={"email": "poor@example.com", "password": "long-pass-2"}, expect=201)
    poor_token = _token(api, "poor@example.com", "long-pass-2")
    api.call("POST", "/billing/charges", json={"agent_id": "profile-my-data"}, token=poor_token, expect=402)

    # Stripe: checkout, the signed webhook, a forged one.
    api.call("POST", "/billing/checkout", json={"package_id": "pack_1k"}, expect=200)
    api.call("POST", "/billing/checkout", json={"package_id": "pack_none"}, expect=404)
    event = checkout_event(event_id="evt_contract_1", session_id="cs_contract_1", user_id=user["id"])
    body, signature = signed(event)
    webhook = {"data": body, "content_type": "application/json"}
    api.call("POST", "/billing/webhook", headers={"Stripe-Signature": signature}, token="", expect=200, **webhook)
    api.call("POST", "/billing/webhook", headers={"Stripe-Signature": "t=1,v1=00"}, token="", expect=400, **webhook)

    # A shortfall for staff to settle.
    ledger.clawback(user_id=poor["id"], amount=7, reason="refunded", idempotency_key="refund-contract")
    ledger.grant(user_id=poor["id"], amount=3, reason="partial")
    settle = {"user_id": poor["id"], "reason": "settled"}
    api.call("POST", "/billing/admin/settle-shortfall", json=settle, token=staff_token, expect=200)

    # Spend caps: read, set, refused above Finance's ceiling, a charge past the cap.
    api.call("GET", "/billing/limits", expect=200)
    ceiling = {"user_id": user["id"], "daily_limit_credits": 1000, "monthly_limit_credits": None}
    api.call("PUT", "/billing/admin/limits", json=ceiling, token=staff_token, expect=200)
    api.call("PUT", "/billing/limits", json={"daily_limit_credits": 1001, "monthly_limit_credits": None}, expect=400)
    api.call("PUT", "/billing/limits", json={"daily_limit_credits": 0, "monthly_limit_credits": None}, expect=200)
    api.call("POST", "/billing/charges", json={"agent_id": "profile-my-data"}, expect=402)

    # Balance alerts; a card saved through Checkout in setup mode; auto-recharge.
    api.call("GET", "/billing/balance-alerts", expect=200)
    api.call("PUT", "/billing/balance-alerts", json={"low_balance_threshold_credits": 50}, expect=200)
    api.call("PUT", "/billing/balance-alerts", json={"low_balance_threshold_credits": -1}, expect=400)
    api.call("GET", "/billing/payment-method", expect=404)
    api.call("DELETE", "/billing/payment-method", expect=404)
    api.call("POST", "/billing/payment-method/setup", expect=201)
    recharge = {"enabled": True, "threshold_credits": 10, "package_id": "pack_1k", "monthly_limit_cents": 5000}
    api.call("PUT", "/billing/auto-recharge", json=recharge, expect=409)  # no card saved yet
    api.call("PUT", "/billing/auto-recharge", json={**recharge, "monthly_limit_cents": 1}, expect=400)
    customer = User.objects.get(pk=user["id"]).stripe_customer_id
    SavedPaymentMethod.objects.create(
        user_id=user["id"],
        stripe_payment_method_id="pm_card_visa",
        stripe_customer_id=customer,
        saved_at=timezone.now(),
    )
    api.call("GET", "/billing/payment-method", expect=200)
    api.call("PUT", "/billing/auto-recharge", json={**recharge, "enabled": False}, expect=200)
    api.call("GET", "/billing/auto-recharge", expect=200)
    api.call("DELETE", "/billing/payment-method", expect=204)

    # Leaving: a password change, a log-out.
    new_password = {"old_password": "long-pass-1", "new_password": "longer-pass-3"}
    api.call("POST", "/auth/password", json=new_password, expect=204)
    fresh = api.call(
        "POST", "/auth/token", json={"email": "buyer@example.com", "password": "longer-pass-3"}, expect=200
    )
    api.call("POST", "/auth/logout", json={"refresh": fresh["refresh"]}, token="", expect=204)

    documented = {(method.upper(), path) for path, item in api.schema.raw_schema["paths"].items() for method in item}
    assert documented - api.checked == set()
