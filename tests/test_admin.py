"""The finance console in Django admin, through Django's test client."""

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from agents.models import AgentCost, AgentCostChange
from billing import ledger
from billing.models import CreditTransaction, StripeWebhookEvent, TransactionKind, Wallet, WebhookEventStatus
from tests.factories import UserFactory
from tests.stripe_helpers import checkout_event

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def row(user):
    return ledger.grant(user_id=user.id, amount=100, reason="seed").transaction


# --- the ledger cannot be edited -------------------------------------------------------------


@pytest.mark.parametrize("who", ["superuser", "staff"])
def test_ledger_rows_cannot_be_added_changed_or_deleted_through_the_admin(request, who, row):
    client = logged_in(request.getfixturevalue(who))
    base = "/admin/billing/credittransaction"

    assert client.get(f"{base}/add/").status_code == 403
    assert client.post(f"{base}/add/", {"kind": "grant", "amount": 5}).status_code == 403
    view = client.get(f"{base}/{row.pk}/change/")
    assert view.status_code == 200 and b'name="amount"' not in view.content  # read-only page
    assert client.post(f"{base}/{row.pk}/change/", {"amount": 999999}).status_code == 403
    assert client.get(f"{base}/{row.pk}/delete/").status_code == 403
    assert client.post(f"{base}/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(f"{base}/", {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"})

    assert CreditTransaction.objects.get(pk=row.pk).amount == 100
    assert CreditTransaction.objects.count() == 1


def test_wallet_balances_are_never_editable(superuser, user, row):
    wallet = Wallet.objects.get(user=user)
    client = logged_in(superuser)
    assert client.post(f"/admin/billing/wallet/{wallet.pk}/change/", {"balance_credits": 10**6}).status_code == 403
    assert client.get("/admin/billing/wallet/add/").status_code == 403
    assert Wallet.objects.get(pk=wallet.pk).balance_credits == 100


# --- grant and debit --------------------------------------------------------------------------------


def test_finance_grants_with_a_reason_and_is_recorded_as_actor(staff, user):
    client = logged_in(staff)
    page = client.get(f"/admin/users/user/{user.pk}/change/")
    assert b'id="grant-credits"' in page.content and b'id="debit-credits"' in page.content

    url = f"/admin/users/user/{user.pk}/credits/grant/"
    form = {"credits": 250, "reason": "Conference voucher", "idempotency_key": "form-1"}
    response = client.post(url, form)
    assert response.status_code == 302
    client.post(url, form)  # a double submit of the same form

    row = CreditTransaction.objects.get()
    assert (row.kind, row.amount, row.reason, row.actor_id) == (
        TransactionKind.GRANT,
        250,
        "Conference voucher",
        staff.id,
    )
    page = client.get(f"/admin/users/user/{user.pk}/change/")
    assert b"Balance <strong>250</strong>" in page.content and b"Conference voucher" in page.content


def test_a_debit_beyond_the_available_balance_is_refused_not_clamped(staff, user, row):
    client = logged_in(staff)
    response = client.post(
        f"/admin/users/user/{user.pk}/credits/debit/",
        {"credits": 101, "reason": "chargeback", "idempotency_key": "d1"},
    )
    assert response.status_code == 200 and b"Only 100 credits are available" in response.content
    assert Wallet.objects.get(user=user).balance_credits == 100

    ok = client.post(
        f"/admin/users/user/{user.pk}/credits/debit/", {"credits": 40, "reason": "fix", "idempotency_key": "d2"}
    )
    assert ok.status_code == 302
    assert CreditTransaction.objects.get(kind=TransactionKind.ADJUSTMENT).amount == -40


@pytest.mark.parametrize(
    "form", [{"credits": 0, "reason": "x"}, {"credits": 5, "reason": ""}, {"credits": "ten", "reason": "x"}]
)
def test_the_grant_form_validates(staff, user, form):
    response = logged_in(staff).post(f"/admin/users/user/{user.pk}/credits/grant/", {**form, "idempotency_key": "k"})
    assert response.status_code == 200 and b"errorlist" in response.content
    assert not CreditTransaction.objects.exists()


@pytest.mark.parametrize("who", ["finance_viewer", "staff_without_permissions"])
def test_staff_without_the_grant_permission_see_no_grant_and_get_403(request, who, user):
    viewer = request.getfixturevalue(who)
    client = logged_in(viewer)
    page = client.get(f"/admin/users/user/{user.pk}/change/")
    assert b"grant-credits" not in page.content
    for direction in ("grant", "debit"):
        url = f"/admin/users/user/{user.pk}/credits/{direction}/"
        assert client.get(url).status_code == 403
        assert client.post(url, {"credits": 5, "reason": "x", "idempotency_key": "k"}).status_code == 403
    assert not CreditTransaction.objects.exists()


# --- agent costs and their history ---------------------------------------------------------------------


def test_editing_a_cost_needs_a_reason_and_is_kept_in_the_history(staff):
    agent = AgentCost.objects.get(agent_id="clean-my-data")
    url = f"/admin/agents/agentcost/{agent.pk}/change/"
    base = {
        "name": agent.name,
        "description": agent.description,
        "cost_credits": 55,
        "is_active": "on",
        "changes-TOTAL_FORMS": 0,
        "changes-INITIAL_FORMS": 0,
    }
    client = logged_in(staff)

    missing_reason = client.post(url, base)
    assert missing_reason.status_code == 200 and AgentCost.objects.get(pk=agent.pk).cost_credits == 40

    for bad in (0, 10_001):
        assert client.post(url, {**base, "cost_credits": bad, "change_reason": "x"}).status_code == 200
    assert client.post(url, {**base, "change_reason": "Q4 pricing"}).status_code == 302

    agent.refresh_from_db()
    assert agent.cost_credits == 55 and agent.is_price_edited
    change = AgentCostChange.objects.get(agent=agent)
    assert (change.old_cost_credits, change.new_cost_credits, change.changed_by, change.reason) == (
        40,
        55,
        staff,
        "Q4 pricing",
    )
    page = client.get(url)
    assert b"Q4 pricing" in page.content and b"price history" in page.content.lower()


def test_reseed_action_keeps_edited_prices(staff):
    AgentCost.objects.filter(agent_id="profile-my-data").update(cost_credits=99)
    AgentCost.objects.filter(agent_id="govern-my-data").delete()
    first = AgentCost.objects.first()
    logged_in(staff).post("/admin/agents/agentcost/", {"action": "reseed_defaults", "_selected_action": [first.pk]})
    assert AgentCost.objects.count() == 22
    assert AgentCost.objects.get(agent_id="profile-my-data").cost_credits == 99


def test_the_reseed_button_needs_no_selection_and_the_change_permission(staff, finance_viewer):
    AgentCost.objects.filter(agent_id="profile-my-data").update(cost_credits=99)
    AgentCost.objects.filter(agent_id="govern-my-data").delete()
    changelist = logged_in(staff).get("/admin/agents/agentcost/")
    assert b'id="reseed-defaults"' in changelist.content
    assert b'id="reseed-defaults"' not in logged_in(finance_viewer).get("/admin/agents/agentcost/").content
    assert logged_in(finance_viewer).post("/admin/agents/agentcost/reseed/").status_code == 403
    assert logged_in(staff).get("/admin/agents/agentcost/reseed/").status_code == 405
    assert AgentCost.objects.count() == 21

    response = logged_in(staff).post("/admin/agents/agentcost/reseed/", follow=True)
    assert response.redirect_chain[-1][0] == "/admin/agents/agentcost/"
    assert b"1 created" in response.content
    assert AgentCost.objects.count() == 22
    assert AgentCost.objects.get(agent_id="profile-my-data").cost_credits == 99


def test_a_finance_viewer_cannot_edit_costs(finance_viewer):
    agent = AgentCost.objects.get(agent_id="clean-my-data")
    response = logged_in(finance_viewer).post(
        f"/admin/agents/agentcost/{agent.pk}/change/",
        {"name": agent.name, "cost_credits": 1, "is_active": "on", "change_reason": "x"},
    )
    assert response.status_code == 403
    assert AgentCost.objects.get(pk=agent.pk).cost_credits == 40


# --- ledger list: totals and CSV export -------------------------------------------------------------------


def test_the_ledger_list_shows_totals_of_the_filtered_rows(finance_viewer, user, row):
    ledger.charge(user_id=user.id, amount=30, agent_id="profile-my-data")
    ledger.charge(user_id=user.id, amount=20, agent_id="clean-my-data")
    page = logged_in(finance_viewer).get("/admin/billing/credittransaction/", {"kind__exact": "charge"})
    totals = page.context["totals"]
    assert (totals["rows"], totals["credits_out"], totals["net"]) == (2, -50, -50)
    assert b'id="export-csv"' in page.content


def test_csv_export_streams_the_filtered_set(finance_viewer, user, row):
    for amount in range(1, 6):
        ledger.charge(user_id=user.id, amount=amount, agent_id="profile-my-data")
    response = logged_in(finance_viewer).get("/admin/billing/credittransaction/export/", {"kind__exact": "charge"})
    assert response.status_code == 200 and response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(r["amount"]) for r in rows] == [-5, -4, -3, -2, -1]
    assert {r["user_email"] for r in rows} == {user.email}


def test_csv_export_needs_the_permission(staff_without_permissions):
    assert logged_in(staff_without_permissions).get("/admin/billing/credittransaction/export/").status_code == 403


# --- webhook events -----------------------------------------------------------------------------------------


def test_failed_events_show_their_payload_and_finance_can_reprocess_them(
    client, staff, finance_viewer, user, monkeypatch
):
    from tests.stripe_helpers import deliver

    monkeypatch.setattr(ledger, "purchase", lambda **kw: (_ for _ in ()).throw(RuntimeError("outage")))
    deliver(client, checkout_event(event_id="evt_admin", session_id="cs_admin", user_id=user.id))
    monkeypatch.undo()
    event = StripeWebhookEvent.objects.get()
    assert event.status == WebhookEventStatus.FAILED

    page = logged_in(finance_viewer).get(f"/admin/billing/stripewebhookevent/{event.pk}/change/")
    assert b"&quot;checkout.session.completed&quot;" in page.content and b"<pre" in page.content
    changelist = logged_in(finance_viewer).get("/admin/billing/stripewebhookevent/")
    assert b"reprocess" not in changelist.content

    logged_in(staff).post("/admin/billing/stripewebhookevent/", {"action": "reprocess", "_selected_action": [event.pk]})
    event.refresh_from_db()
    assert event.status == WebhookEventStatus.PROCESSED
    assert Wallet.objects.get(user=user).balance_credits == 1000


# --- reports ---------------------------------------------------------------------------------------------------


def test_reports_page_shows_the_figures_and_a_chart(finance_viewer, user, other_user):
    ledger.grant(user_id=user.id, amount=1000, reason="seed")
    ledger.charge(user_id=user.id, amount=60, agent_id="master-my-data")
    ledger.charge(user_id=user.id, amount=25, agent_id="profile-my-data")
    ledger.grant(user_id=other_user.id, amount=100, reason="seed")
    ledger.charge(user_id=other_user.id, amount=25, agent_id="profile-my-data")
    held = ledger.hold(user_id=user.id, amount=40, agent_id="clean-my-data")

    page = logged_in(finance_viewer).get("/admin/reports/")
    assert page.status_code == 200
    assert b'<svg id="credits-chart"' in page.content
    usage = {row["agent_id"]: row for row in page.context["tables"]["usage_by_agent"]}
    assert (
        usage["profile-my-data"]["charges"],
        usage["profile-my-data"]["credits"],
        usage["profile-my-data"]["users"],
    ) == (2, 50, 2)
    assert usage["master-my-data"]["credits"] == 60
    assert page.context["held"]["held_credits"] == held.hold.amount
    today = timezone.now().date().isoformat()
    by_day = {row["day"]: row for row in page.context["tables"]["credits_by_day"]}
    assert by_day[today]["granted"] == 1100 and by_day[today]["consumed"] == 110
    assert page.context["tables"]["top_users"][0]["email"] == user.email


def test_each_report_table_downloads_as_csv(finance_viewer, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    ledger.charge(user_id=user.id, amount=25, agent_id="profile-my-data")
    response = logged_in(finance_viewer).get("/admin/reports/", {"download": "usage_by_agent"})
    assert response["Content-Type"].startswith("text/csv")
    assert list(csv.DictReader(io.StringIO(response.content.decode()))) == [
        {"agent_id": "profile-my-data", "charges": "1", "credits": "25", "users": "1"}
    ]
    assert logged_in(finance_viewer).get("/admin/reports/", {"download": "nope"}).status_code == 404


def test_reports_validate_the_period_and_need_the_permission(finance_viewer, staff_without_permissions):
    later = (timezone.now() - timedelta(days=1)).date()
    response = logged_in(finance_viewer).get(
        "/admin/reports/", {"start": str(later), "end": str(later - timedelta(days=5))}
    )
    assert response.status_code == 200 and b"The start must not be after the end." in response.content
    assert logged_in(finance_viewer).get("/admin/reports/", {"start": "not-a-date"}).status_code == 200
    assert logged_in(staff_without_permissions).get("/admin/reports/").status_code == 403
    assert Client().get("/admin/reports/").status_code == 302  # to the login page
