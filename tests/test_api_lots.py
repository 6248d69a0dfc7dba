"""Credit lots over HTTP: the wallet's lots and what expires soon, the lots each ledger row drew,
what funded an agent run, staff grants with lot terms (at once, through an approval request, in
the admin), and the packages whose credits expire."""

import hashlib
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agents import runner
from billing import ledger
from billing.approvals import change_credits
from billing.models import (
    ApprovalStatus,
    CreditApprovalRequest,
    CreditLot,
    CreditTransaction,
    LotCategory,
    Wallet,
)
from billing.packages import all_packages
from billing.roles import FINANCE, ensure_finance_groups
from core.fields import CLIENT_KEY_PREFIX
from tests.factories import StaffFactory

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)
GRANT = "/billing/admin/grant"
CSV = "name,email\nAda,ada@example.com\nBob,bob@example.com\n"


def grant(user, amount, **terms) -> CreditLot:
    row = ledger.grant(user_id=user.id, amount=amount, reason="test", **terms).transaction
    return CreditLot.objects.get(transaction=row)


def balance(user) -> int:
    wallet = Wallet.objects.filter(user=user).first()
    return wallet.balance_credits if wallet else 0


def at(text: str | None):
    return parse_datetime(text) if text else None


def queries(callable_) -> int:
    with CaptureQueriesContext(connection) as captured:
        callable_()
    return len(captured)


# --- GET /billing/wallet: lots and expiring_soon --------------------------------------------------


def test_a_new_users_wallet_has_no_lots_and_nothing_expiring(user_client):
    body = user_client.get("/billing/wallet").json()

    assert body["balance_credits"] == 0 and body["transactions"] == []
    assert body["lots"] == []
    assert body["expiring_soon"] == {"credits": 0, "first_expires_at": None, "within_days": 30}


def test_the_wallet_lists_the_lots_that_hold_credits_in_burn_order(user_client, user):
    soon = timezone.now() + 10 * DAY
    paid_forever = grant(user, 100, category=LotCategory.PAID)
    promo_forever = grant(user, 50)
    promo_forever_too = grant(user, 40)
    paid_soon = grant(user, 30, category=LotCategory.PAID, expires_at=soon)
    promo_soon = grant(user, 20, expires_at=soon)
    first_by_priority = grant(user, 10, expires_at=timezone.now() + 60 * DAY, priority=-1)
    ledger.charge(user_id=user.id, amount=10, agent_id="a")  # spends the priority lot: it leaves the list
    ledger.hold(user_id=user.id, amount=5, agent_id="a")  # pins the next lot in burn order

    lots = user_client.get("/billing/wallet").json()["lots"]

    assert [lot["id"] for lot in lots] == [
        promo_soon.id,  # soonest expiry, promotional before paid
        paid_soon.id,
        promo_forever.id,  # never expiring last, promotional before paid, oldest first
        promo_forever_too.id,
        paid_forever.id,
    ]
    assert first_by_priority.id not in {lot["id"] for lot in lots}
    assert lots[0] == {
        "id": promo_soon.id,
        "category": "promotional",
        "remaining": 20,
        "held": 5,
        "original": 20,
        "expires_at": lots[0]["expires_at"],
        "priority": 0,
    }
    assert at(lots[0]["expires_at"]) == soon
    assert lots[-1]["category"] == "paid" and lots[-1]["expires_at"] is None
    # The list is the order the ledger really spends in: the next debit takes the first lots.
    debit = ledger.adjust(user_id=user.id, amount=-40, reason="check the order").transaction
    assert [d.lot_id for d in debit.draws.order_by("id")] == [promo_soon.id, paid_soon.id]


def test_expiring_soon_counts_the_credits_of_lots_expiring_within_30_days(user_client, user):
    now = timezone.now()
    grant(user, 20, expires_at=now + 5 * DAY)
    grant(user, 30, category=LotCategory.PAID, expires_at=now + 29 * DAY)
    grant(user, 40, expires_at=now + 31 * DAY)
    grant(user, 100)

    soon = user_client.get("/billing/wallet").json()["expiring_soon"]

    assert soon["credits"] == 50 and soon["within_days"] == 30
    assert at(soon["first_expires_at"]) == now + 5 * DAY


def test_the_wallet_costs_the_same_few_queries_however_many_lots_and_draws(user_client, user):
    grant(user, 500)
    ledger.charge(user_id=user.id, amount=1, agent_id="a")
    few = queries(lambda: user_client.get("/billing/wallet"))
    for i in range(6):
        grant(user, 10, expires_at=timezone.now() + (i + 1) * DAY)
        ledger.charge(user_id=user.id, amount=15, agent_id="a")

    assert queries(lambda: user_client.get("/billing/wallet")) == few


# --- transactions: the lots each row drew --------------------------------------------------------


def test_a_debits_row_shows_the_lots_it_drew_and_a_credits_row_its_lot(user_client, user):
    promo = grant(user, 30, expires_at=timezone.now() + 10 * DAY)
    paid = grant(user, 100, category=LotCategory.PAID)
    charge = ledger.charge(user_id=user.id, amount=50, agent_id="profile-my-data").transaction

    rows = {row["id"]: row for row in user_client.get("/billing/transactions").json()["results"]}

    assert rows[charge.id]["draws"] == [
        {"lot_id": promo.id, "category": "promotional", "credits": 30},
        {"lot_id": paid.id, "category": "paid", "credits": 20},
    ]
    assert rows[charge.id]["lot_id"] is None
    assert rows[promo.transaction_id]["draws"] == [] and rows[promo.transaction_id]["lot_id"] == promo.id
    assert rows[paid.transaction_id]["lot_id"] == paid.id
    detail = user_client.get(f"/billing/transactions/{charge.id}").json()
    assert detail["draws"] == rows[charge.id]["draws"]
    in_wallet = {row["id"]: row for row in user_client.get("/billing/wallet").json()["transactions"]}
    assert in_wallet[charge.id]["draws"] == rows[charge.id]["draws"]


def test_a_page_of_transactions_costs_the_same_queries_however_many_draws(user_client, user):
    for _ in range(3):
        grant(user, 10)
    ledger.charge(user_id=user.id, amount=25, agent_id="a")
    few = queries(lambda: user_client.get("/billing/transactions"))
    for _ in range(5):
        grant(user, 15)
        ledger.charge(user_id=user.id, amount=12, agent_id="a")

    page = user_client.get("/billing/transactions").json()["results"]
    assert sum(len(row["draws"]) for row in page) > 5
    assert queries(lambda: user_client.get("/billing/transactions")) == few


# --- agent runs: funded_by ----------------------------------------------------------------------


@pytest.mark.usefixtures("agent_costs")
def test_a_runs_receipt_shows_the_lots_that_paid_for_it(user_client, user):
    promo = grant(user, 10, expires_at=timezone.now() + 10 * DAY)
    paid = grant(user, 100, category=LotCategory.PAID)
    funded_by = [
        {"lot_id": promo.id, "category": "promotional", "credits": 10},
        {"lot_id": paid.id, "category": "paid", "credits": 15},
    ]

    response = user_client.post("/api/profile-my-data", {"data": {"csv": CSV}}, format="json")

    assert response.status_code == 200
    receipt = response.json()["receipt"]
    assert (receipt["credits_charged"], receipt["funded_by"]) == (25, funded_by)
    run_id = response.json()["run_id"]
    assert user_client.get(f"/api/agents/runs/{run_id}").json()["receipt"]["funded_by"] == funded_by
    listed = user_client.get("/api/agents/runs").json()["results"]
    assert [run["receipt"]["funded_by"] for run in listed] == [funded_by]


@pytest.mark.usefixtures("agent_costs")
def test_a_failed_run_was_funded_by_nothing(user_client, user, monkeypatch):
    grant(user, 100)
    monkeypatch.setitem(runner.TOOLS, "profile-my-data", "tests.sandbox_tools:boom")

    response = user_client.post("/api/profile-my-data", {"data": {"csv": CSV}}, format="json")

    assert response.status_code == 422
    assert response.json()["receipt"]["funded_by"] == [] and balance(user) == 100
    listed = user_client.get("/api/agents/runs").json()["results"]
    assert listed[0]["status"] == "failed" and listed[0]["receipt"]["funded_by"] == []


@pytest.mark.usefixtures("agent_costs")
def test_a_page_of_runs_costs_the_same_queries_however_many_runs(user_client, user):
    grant(user, 1000)
    user_client.post("/api/profile-my-data", {"data": {"csv": CSV}}, format="json")
    few = queries(lambda: user_client.get("/api/agents/runs"))
    for _ in range(3):
        user_client.post("/api/profile-my-data", {"data": {"csv": CSV}}, format="json")

    listed = user_client.get("/api/agents/runs").json()["results"]
    assert len(listed) == 4 and all(run["receipt"]["funded_by"] for run in listed)
    assert queries(lambda: user_client.get("/api/agents/runs")) == few


# --- staff grants with lot terms ------------------------------------------------------------------


def test_a_staff_grant_takes_a_category_and_an_expiry(staff_client, staff, user):
    expires_at = (timezone.now() + 90 * DAY).replace(microsecond=0)
    body = {"user_id": user.id, "credits": 500, "reason": "annual plan", "category": "paid"}

    response = staff_client.post(GRANT, {**body, "expires_at": expires_at.isoformat()}, format="json")

    assert response.status_code == 200 and response.json()["new_balance"] == 500
    lot = CreditLot.objects.get(wallet__user=user)
    assert (lot.category, lot.expires_at, lot.original_credits, lot.actor_id) == ("paid", expires_at, 500, staff.id)
    assert lot.transaction_id == response.json()["transaction_id"]


def test_a_staff_grant_without_terms_is_a_promotional_lot_that_never_expires(staff_client, user):
    response = staff_client.post(GRANT, {"user_id": user.id, "credits": 70, "reason": "welcome"}, format="json")

    assert response.status_code == 200
    lot = CreditLot.objects.get(wallet__user=user)
    assert (lot.category, lot.expires_at) == ("promotional", None)


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"category": "gold"}, "category"),
        ({"category": 1}, "category"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "next tuesday"}, "expires_at"),
    ],
    ids=["unknown-category", "category-not-a-string", "past-expiry", "not-a-datetime"],
)
def test_bad_lot_terms_are_400_with_field_errors_and_nothing_changes(staff_client, user, terms, field):
    body = {"user_id": user.id, "credits": 500, "reason": "x", **terms}

    response = staff_client.post(GRANT, body, format="json")

    assert response.status_code == 400
    assert response.json()["error_code"] == "VALIDATION_ERROR" and field in response.json()["errors"]
    assert not CreditTransaction.objects.exists() and not CreditLot.objects.exists()


@pytest.mark.parametrize(
    "terms",
    [{"category": "paid"}, {"category": "promotional"}, {"expires_at": "2999-01-01T00:00:00Z"}],
    ids=["paid", "promotional", "expiry"],
)
def test_a_debit_refuses_lot_terms(staff_client, user, terms):
    ledger.grant(user_id=user.id, amount=100, reason="seed")

    response = staff_client.post(GRANT, {"user_id": user.id, "credits": -40, "reason": "fix", **terms}, format="json")

    assert response.status_code == 400
    assert set(response.json()["errors"]) == set(terms)
    assert balance(user) == 100 and CreditTransaction.objects.count() == 1


def test_lot_terms_are_refused_on_debits_by_the_service_too(staff, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    with pytest.raises(ledger.InvalidLedgerRequest):
        change_credits(user_id=user.id, amount=-10, reason="x", actor_id=staff.id, category=LotCategory.PAID)
    assert balance(user) == 100


# --- above the approval threshold ------------------------------------------------------------------


@pytest.fixture
def approver(db):
    ensure_finance_groups()
    person = StaffFactory()
    person.groups.add(Group.objects.get(name=FINANCE))
    return person


def logged_in(person) -> Client:
    client = Client()
    client.force_login(person)
    return client


def test_an_approval_request_carries_the_lot_terms_and_approving_applies_them(
    staff_client, staff, user, approver, settings
):
    settings.FINANCE_APPROVAL_THRESHOLD = 10_000
    expires_at = (timezone.now() + 90 * DAY).replace(microsecond=0)
    body = {"user_id": user.id, "credits": 20_000, "reason": "enterprise", "category": "paid"}

    response = staff_client.post(GRANT, {**body, "expires_at": expires_at.isoformat()}, format="json")

    assert response.status_code == 202 and balance(user) == 0
    approval = CreditApprovalRequest.objects.get()
    assert (approval.lot_category, approval.lot_expires_at) == ("paid", expires_at)
    listing = logged_in(approver).get("/admin/billing/creditapprovalrequest/")
    assert listing.status_code == 200 and b"column-lot_category" in listing.content
    assert b"column-lot_expires_at" in listing.content

    decided = logged_in(approver).post(
        f"/admin/billing/creditapprovalrequest/{approval.pk}/decide/", {"_approve": "1", "note": ""}
    )

    assert decided.status_code == 302
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED and balance(user) == 20_000
    lot = CreditLot.objects.get(transaction=approval.transaction)
    assert (lot.category, lot.expires_at, lot.original_credits) == ("paid", expires_at, 20_000)


def test_a_request_whose_expiry_has_passed_is_not_approved_and_stays_pending(staff, user, approver, settings):
    settings.FINANCE_APPROVAL_THRESHOLD = 10_000
    change = change_credits(
        user_id=user.id, amount=20_000, reason="x", actor_id=staff.id, expires_at=timezone.now() + DAY
    )
    CreditApprovalRequest.objects.filter(pk=change.approval.pk).update(lot_expires_at=timezone.now() - DAY)

    decided = logged_in(approver).post(
        f"/admin/billing/creditapprovalrequest/{change.approval.pk}/decide/", {"_approve": "1", "note": ""}
    )

    assert decided.status_code == 302
    assert CreditApprovalRequest.objects.get().status == ApprovalStatus.PENDING
    assert balance(user) == 0 and not CreditLot.objects.exists()


def test_a_debit_request_carries_no_lot_terms(staff_client, user, settings):
    settings.FINANCE_APPROVAL_THRESHOLD = 10_000
    ledger.grant(user_id=user.id, amount=30_000, reason="seed")

    response = staff_client.post(GRANT, {"user_id": user.id, "credits": -20_000, "reason": "fix"}, format="json")

    assert response.status_code == 202
    approval = CreditApprovalRequest.objects.get()
    assert (approval.lot_category, approval.lot_expires_at) == (None, None)


def test_an_approval_requests_key_replays_only_with_the_same_lot_terms(staff_client, staff, user, settings):
    settings.FINANCE_APPROVAL_THRESHOLD = 10_000
    body = {"user_id": user.id, "credits": 20_000, "reason": "enterprise", "expires_at": "2999-01-01T00:00:00Z"}
    first = staff_client.post(GRANT, body, format="json", HTTP_IDEMPOTENCY_KEY="terms-1")
    again = staff_client.post(GRANT, body, format="json", HTTP_IDEMPOTENCY_KEY="terms-1")
    other_expiry = staff_client.post(
        GRANT, {**body, "expires_at": "2998-01-01T00:00:00Z"}, format="json", HTTP_IDEMPOTENCY_KEY="terms-1"
    )
    other_category = staff_client.post(
        GRANT, {**body, "category": "paid"}, format="json", HTTP_IDEMPOTENCY_KEY="terms-1"
    )

    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert other_expiry.status_code == other_category.status_code == 409
    assert CreditApprovalRequest.objects.count() == 1


def test_a_request_made_before_lot_terms_still_replays_its_key(staff_client, staff, user, settings):
    settings.FINANCE_APPROVAL_THRESHOLD = 10_000
    # The fingerprint as it was computed before grants took lot terms.
    before = json.dumps({"verb": "staff_change", "amount": 20_000, "reason": "legacy"})
    approval = CreditApprovalRequest.objects.create(
        user=user,
        credits=20_000,
        reason="legacy",
        requested_by=staff,
        idempotency_key=CLIENT_KEY_PREFIX + "old-key",  # as the API stores a client's key
        request_fingerprint=hashlib.sha256(before.encode()).hexdigest(),
    )
    body = {"user_id": user.id, "credits": 20_000, "reason": "legacy"}

    replay = staff_client.post(GRANT, body, format="json", HTTP_IDEMPOTENCY_KEY="old-key")

    assert replay.status_code == 202 and replay.json()["approval_id"] == approval.id
    assert CreditApprovalRequest.objects.count() == 1


# --- the admin's grant form ------------------------------------------------------------------------


def test_the_admin_grant_form_takes_lot_terms(staff, user):
    client = logged_in(staff)
    url = f"/admin/users/user/{user.pk}/credits/grant/"
    assert b'name="expires_at"' in client.get(url).content
    form = {"credits": 250, "reason": "voucher", "idempotency_key": "lot-form-1"}

    refused = client.post(url, {**form, "category": "paid", "expires_at": "2001-01-01T10:00"})
    granted = client.post(url, {**form, "category": "paid", "expires_at": "2999-01-01T10:00"})

    assert refused.status_code == 200 and b"The expiry must be in the future." in refused.content
    assert granted.status_code == 302
    lot = CreditLot.objects.get(wallet__user=user)
    assert (lot.category, lot.expires_at.isoformat()) == ("paid", "2999-01-01T10:00:00+00:00")


def test_the_admin_debit_form_has_no_lot_terms(staff, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    client = logged_in(staff)
    url = f"/admin/users/user/{user.pk}/credits/debit/"

    page = client.get(url)
    debited = client.post(
        url, {"credits": 40, "reason": "fix", "idempotency_key": "d-1", "category": "paid", "expires_at": "x"}
    )

    assert b'name="expires_at"' not in page.content and b'name="category"' not in page.content
    assert debited.status_code == 302 and balance(user) == 60


# --- GET /billing/packages -------------------------------------------------------------------------


@pytest.fixture
def packages_file(settings, tmp_path):
    path = tmp_path / "credit_packages.json"
    packages = json.loads(settings.BILLING_PACKAGES_FILE.read_text())
    packages[0]["expires_in_days"] = 365
    path.write_text(json.dumps(packages))
    settings.BILLING_PACKAGES_FILE = path
    all_packages.cache_clear()
    yield packages
    all_packages.cache_clear()


def test_packages_show_when_their_credits_expire(anon, packages_file):
    listed = anon.get("/billing/packages").json()["packages"]

    assert listed[0]["expires_in_days"] == 365
    assert all(package["expires_in_days"] is None for package in listed[1:])
    assert len(listed) == len(packages_file) >= 2
