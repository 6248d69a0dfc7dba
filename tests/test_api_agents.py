import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from agents import runner
from agents.models import AgentCost, AgentRun, RunStatus
from billing import ledger
from billing.models import CreditHold, CreditLot, CreditTransaction, HoldStatus, TransactionKind, Wallet

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]

CSV = "name,email,age\nAda,ada@example.com,36\nBob,,41\nAda,ada@example.com,36\n"
BODY = {"tool_configuration": {}, "data": {"csv": CSV}}


def balance(user) -> int:
    return Wallet.objects.get(user=user).balance_credits


def test_a_run_with_no_credits_is_402_with_required_and_available(user_client, user):
    response = user_client.post("/api/profile-my-data", BODY, format="json")
    assert response.status_code == 402
    assert response.json() == {
        "error_code": "BILLING_INSUFFICIENT_CREDITS",
        "detail": response.json()["detail"],
        "required": 25,
        "available": 0,
    }
    assert not AgentRun.objects.exists() and not CreditHold.objects.exists()


def test_a_successful_run_charges_the_cost_once_and_returns_a_receipt(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    response = user_client.post("/api/profile-my-data", BODY, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["agent_id"] == "profile-my-data" and body["status"] == "succeeded"
    lot_id = CreditLot.objects.get(wallet__user=user).id
    assert body["receipt"] == {
        "run_id": body["run_id"],
        "credits_charged": 25,
        "balance_after": 75,
        "funded_by": [{"lot_id": lot_id, "category": "promotional", "credits": 25}],
    }
    assert balance(user) == 75
    charge = CreditTransaction.objects.get(kind=TransactionKind.CHARGE)
    assert (charge.amount, charge.agent_id, str(charge.agent_run_id)) == (-25, "profile-my-data", body["run_id"])
    assert Wallet.objects.get(user=user).held_credits == 0


def test_the_current_price_is_what_is_charged(user_client, user):
    AgentCost.objects.filter(agent_id="clean-my-data").update(cost_credits=33)
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    body = user_client.post("/api/clean-my-data", BODY, format="json").json()
    assert body["receipt"]["credits_charged"] == 33 and balance(user) == 67


def test_profile_reports_nulls_and_duplicate_rows(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    result = user_client.post("/api/profile-my-data", BODY, format="json").json()["result"]
    assert result["row_count"] == 3 and result["duplicate_rows"] == 1
    columns = {c["name"]: c for c in result["columns"]}
    assert columns["email"]["null_count"] == 1 and columns["email"]["distinct_count"] == 1
    assert columns["age"]["type"] == "integer"


@pytest.mark.parametrize("agent_id", ["profile-my-data", "clean-my-data"])
def test_numbers_that_overflow_a_float_make_a_paid_result_with_nulls_not_a_500(user_client, user, agent_id):
    # The mean of 1.5e308 and 1.5e308 is infinite: JSON cannot carry it, and a run that charged must
    # still answer (and stay readable) rather than fail after the capture.
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    rows = [{"a": 1.5e308, "b": "x"}, {"a": 1.5e308, "b": None}, {"a": None, "b": "y"}]
    options = {"missing": {"a": {"strategy": "mean"}}} if agent_id == "clean-my-data" else {}
    response = user_client.post(
        f"/api/{agent_id}", {"tool_configuration": options, "data": {"rows": rows}}, format="json"
    )
    assert response.status_code == 200, response.content[:300]
    assert "Infinity" not in response.content.decode() and "NaN" not in response.content.decode()
    detail = user_client.get(f"/api/agents/runs/{response.json()['run_id']}")
    assert detail.status_code == 200 and detail.json()["result"] == response.json()["result"]


def test_clean_returns_the_same_format_and_a_change_log(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    rows = [{"name": "  Ada  Lovelace "}, {"name": "Ada Lovelace"}, {"name": "   "}]
    body = user_client.post("/api/clean-my-data", {"data": {"rows": rows}}, format="json").json()
    assert body["result"]["data"] == {"rows": [{"name": "Ada Lovelace"}, {"name": None}]}
    steps = {(c["step"], c["column"]): c["count"] for c in body["result"]["changes"]}
    assert steps == {("trim_whitespace", "name"): 2, ("blank_as_null", "name"): 1, ("drop_duplicates", None): 1}


def test_master_clusters_matching_rows_by_position(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    csv = "name,email\nAda,ADA@example.com\nBob,bob@example.com\nada ,ada@example.com\n"
    body = user_client.post(
        "/api/master-my-data",
        {"tool_configuration": {"match_columns": ["email"], "threshold": 0.9}, "data": {"csv": csv}},
        format="json",
    ).json()
    assert [c["row_ids"] for c in body["result"]["clusters"]] == [[0, 2]]
    assert body["result"]["golden_records"][0]["record"]["name"] == "Ada"


def test_a_multipart_csv_upload_is_accepted(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    upload = SimpleUploadedFile("people.csv", CSV.encode(), content_type="text/csv")
    response = user_client.post(
        "/api/profile-my-data", {"file": upload, "tool_configuration": "{}"}, format="multipart"
    )
    assert response.status_code == 200
    assert response.json()["result"]["row_count"] == 3


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "data"),
        ({"data": "a,b"}, "data"),
        ({"data": {}}, "data"),
        ({"data": {"csv": CSV, "rows": []}}, "data"),
        ({"data": {"csv": 42}}, "data.csv"),
        ({"data": {"csv": ""}}, "data.csv"),
        ({"data": {"csv": "a,a\n1,2"}}, "data.csv"),
        ({"data": {"csv": "a,b\n1,2,3"}}, "data.csv"),
        ({"data": {"rows": {"a": 1}}}, "data.rows"),
        ({"data": {"rows": [1, 2]}}, "data.rows"),
        ({"data": {"rows": [{"a": {"nested": 1}}]}}, "data.rows"),
        ({"tool_configuration": [], "data": {"csv": CSV}}, "tool_configuration"),
        ({"tool_configuration": {"top_values": "many"}, "data": {"csv": CSV}}, "tool_configuration"),
        ({"tool_configuration": {"top_values": -1}, "data": {"csv": CSV}}, "tool_configuration"),
        ({"tool_configuration": {"no_such_option": 1}, "data": {"csv": CSV}}, "tool_configuration"),
    ],
)
def test_bad_input_is_400_before_any_credits_are_held(user_client, user, body, field):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    response = user_client.post("/api/profile-my-data", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "VALIDATION_ERROR"
    assert field in response.json()["errors"]
    assert not CreditHold.objects.exists() and balance(user) == 100


@pytest.mark.parametrize(
    "configuration",
    [{"threshold": 1.5}, {"threshold": "high"}, {"match_columns": ["nope"]}, {"match_columns": "email"}],
)
def test_master_configuration_is_validated(user_client, user, configuration):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    response = user_client.post(
        "/api/master-my-data", {"tool_configuration": configuration, "data": {"csv": CSV}}, format="json"
    )
    assert response.status_code == 400
    assert "tool_configuration" in response.json()["errors"]
    assert balance(user) == 100


def test_too_many_rows_is_413(user_client, user, settings):
    settings.AGENT_MAX_ROWS = 2
    response = user_client.post("/api/profile-my-data", BODY, format="json")
    assert response.status_code == 413
    assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE"


def test_a_failing_tool_releases_the_hold_and_charges_nothing(user_client, user, monkeypatch):
    ledger.grant(user_id=user.id, amount=100, reason="seed")

    monkeypatch.setitem(runner.TOOLS, "profile-my-data", "tests.sandbox_tools:boom")  # raises ValueError
    response = user_client.post("/api/profile-my-data", BODY, format="json")

    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "AGENT_RUN_FAILED" and body["status"] == "failed"
    assert body["receipt"]["credits_charged"] == 0 and body["receipt"]["balance_after"] == 100
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (100, 0)
    assert not CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()
    assert CreditHold.objects.get().status == HoldStatus.RELEASED
    run = AgentRun.objects.get()
    assert run.status == RunStatus.FAILED and "ValueError: bad input" in run.error


def test_an_idempotency_key_replays_the_run_without_charging_again(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    first = user_client.post("/api/profile-my-data", BODY, format="json", HTTP_IDEMPOTENCY_KEY="run-1")
    again = user_client.post("/api/profile-my-data", BODY, format="json", HTTP_IDEMPOTENCY_KEY="run-1")
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert balance(user) == 75 and AgentRun.objects.count() == 1

    other = {"data": {"csv": "x\n1\n"}}
    conflict = user_client.post("/api/profile-my-data", other, format="json", HTTP_IDEMPOTENCY_KEY="run-1")
    assert conflict.status_code == 409 and balance(user) == 75


def test_with_enforcement_off_agents_run_without_charging(user_client, user, settings):
    settings.BILLING_ENFORCEMENT = False
    response = user_client.post("/api/profile-my-data", BODY, format="json")
    assert response.status_code == 200
    assert response.json()["receipt"]["credits_charged"] == 0
    assert not CreditTransaction.objects.exists() and not CreditHold.objects.exists()


def test_an_inactive_agent_is_unavailable(user_client, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    AgentCost.objects.filter(agent_id="profile-my-data").update(is_active=False)
    response = user_client.post("/api/profile-my-data", BODY, format="json")
    assert response.status_code == 404
    assert response.json()["error_code"] == "AGENT_UNAVAILABLE"
    assert balance(user) == 100


def test_agents_need_a_jwt(anon):
    response = anon.post("/api/profile-my-data", BODY, format="json")
    assert response.status_code == 401
