"""Four eyes on large grants and debits (FINANCE_APPROVAL_THRESHOLD): above it nothing moves until
a different Finance user approves in the admin; nobody decides their own request or their own credits."""

from collections import Counter

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.db import IntegrityError, transaction
from django.test import Client
from django.utils import timezone

from billing import approvals, ledger
from billing.models import ApprovalStatus, CreditApprovalRequest, CreditTransaction, TransactionKind, Wallet
from billing.roles import FINANCE, FINANCE_VIEWER, ensure_finance_groups
from tests.concurrency import in_threads
from tests.factories import StaffFactory, UserFactory

pytestmark = pytest.mark.django_db

THRESHOLD = 10_000
GRANT = "/billing/admin/grant"


@pytest.fixture(autouse=True)
def _threshold(settings):
    settings.FINANCE_APPROVAL_THRESHOLD = THRESHOLD


def finance_user(**fields):
    ensure_finance_groups()  # transactional tests flush the migration's groups
    person = StaffFactory(**fields)
    person.groups.add(Group.objects.get(name=FINANCE))
    return person


@pytest.fixture
def approver(db):
    """A second Finance user (the `staff` fixture is the first, the requester)."""
    return finance_user()


def logged_in(person) -> Client:
    client = Client()
    client.force_login(person)
    return client


def decide(client: Client, approval_id: int, decision: str, note: str = ""):
    return client.post(f"/admin/billing/creditapprovalrequest/{approval_id}/decide/", {decision: "1", "note": note})


def said(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def balance(person) -> int:
    wallet = Wallet.objects.filter(user=person).first()
    return wallet.balance_credits if wallet else 0


def pending_request(*, target, requester, credits=20_000, reason="Enterprise onboarding") -> CreditApprovalRequest:
    change = approvals.change_credits(user_id=target.id, amount=credits, reason=reason, actor_id=requester.id)
    assert change.executed is None
    return change.approval


# --- the API: above the threshold nothing moves ------------------------------------------------------


@pytest.mark.parametrize("credits", [THRESHOLD + 1, -(THRESHOLD + 1), 500_000])
def test_an_api_grant_or_debit_above_the_threshold_waits_and_moves_nothing(staff_client, staff, user, credits):
    ledger.grant(user_id=user.id, amount=20_000, reason="seed")

    response = staff_client.post(GRANT, {"user_id": user.id, "credits": credits, "reason": "big one"}, format="json")

    assert response.status_code == 202
    body = response.json()
    approval = CreditApprovalRequest.objects.get()
    assert body == {
        "success": True,
        "status": "pending_approval",
        "approval_id": approval.id,
        "new_balance": 20_000,
        "transaction_id": None,
    }
    assert balance(user) == 20_000
    assert CreditTransaction.objects.filter(wallet__user=user).count() == 1  # only the seed
    assert (approval.user, approval.credits, approval.reason, approval.requested_by) == (
        user,
        credits,
        "big one",
        staff,
    )
    assert (approval.status, approval.decided_by, approval.transaction) == (ApprovalStatus.PENDING, None, None)


def test_the_same_idempotency_key_replays_the_pending_request(staff_client, user, approver):
    body = {"user_id": user.id, "credits": 25_000, "reason": "migration credit"}
    first = staff_client.post(GRANT, body, format="json", HTTP_IDEMPOTENCY_KEY="big-1")
    again = staff_client.post(GRANT, body, format="json", HTTP_IDEMPOTENCY_KEY="big-1")

    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert CreditApprovalRequest.objects.count() == 1
    conflict = staff_client.post(GRANT, {**body, "credits": 25_001}, format="json", HTTP_IDEMPOTENCY_KEY="big-1")
    assert conflict.status_code == 409 and conflict.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    below = staff_client.post(GRANT, {**body, "credits": 5}, format="json", HTTP_IDEMPOTENCY_KEY="big-1")
    assert below.status_code == 409
    assert not CreditTransaction.objects.exists()

    decide(logged_in(approver), first.json()["approval_id"], "_approve")
    replay = staff_client.post(GRANT, body, format="json", HTTP_IDEMPOTENCY_KEY="big-1")

    assert replay.status_code == 202
    row = CreditTransaction.objects.get()
    assert replay.json() == {
        "success": True,
        "status": "approved",
        "approval_id": first.json()["approval_id"],
        "new_balance": 25_000,
        "transaction_id": row.id,
    }
    assert CreditApprovalRequest.objects.count() == 1 and balance(user) == 25_000


@pytest.mark.parametrize("credits", [THRESHOLD, -THRESHOLD, 1])
def test_at_or_below_the_threshold_a_grant_executes_at_once(staff_client, staff, user, credits):
    ledger.grant(user_id=user.id, amount=THRESHOLD, reason="seed")

    response = staff_client.post(GRANT, {"user_id": user.id, "credits": credits, "reason": "small"}, format="json")

    assert response.status_code == 200
    assert response.json()["success"] is True and response.json()["status"] == "completed"
    assert response.json()["new_balance"] == THRESHOLD + credits == balance(user)
    assert not CreditApprovalRequest.objects.exists()


def test_threshold_zero_disables_approvals(staff_client, user, settings, approver):
    settings.FINANCE_APPROVAL_THRESHOLD = 0

    api = staff_client.post(GRANT, {"user_id": user.id, "credits": 900_000, "reason": "no approvals"}, format="json")
    form = logged_in(approver).post(
        f"/admin/users/user/{user.pk}/credits/grant/", {"credits": 50_000, "reason": "x", "idempotency_key": "z"}
    )

    assert api.status_code == 200 and form.status_code == 302
    assert balance(user) == 950_000
    assert not CreditApprovalRequest.objects.exists()


# --- deciding in the admin -----------------------------------------------------------------------------


def test_a_different_finance_user_approves_and_the_ledger_moves_once(staff, approver, user):
    approval = pending_request(target=user, requester=staff)
    client = logged_in(approver)

    page = client.get(f"/admin/billing/creditapprovalrequest/{approval.pk}/change/")
    assert page.status_code == 200 and b'id="decision-form"' in page.content
    response = decide(client, approval.pk, "_approve", note="checked the contract")
    again = decide(client, approval.pk, "_approve")

    assert response.status_code == again.status_code == 302
    row = CreditTransaction.objects.get()
    assert (row.kind, row.amount, row.reason, row.actor_id) == (
        TransactionKind.GRANT,
        20_000,
        "Enterprise onboarding",
        approver.id,
    )
    assert row.metadata == {"approval_request_id": approval.pk, "requested_by_id": staff.id}
    approval.refresh_from_db()
    assert (approval.status, approval.decided_by, approval.transaction, approval.decision_note) == (
        ApprovalStatus.APPROVED,
        approver,
        row,
        "checked the contract",
    )
    assert balance(user) == 20_000
    assert any("already approved" in m for m in said(again))
    history = LogEntry.objects.get(object_id=str(approval.pk))
    assert history.user == approver and "Approved request" in history.get_change_message()


def test_an_approved_debit_takes_the_credits(staff, approver, user):
    ledger.grant(user_id=user.id, amount=30_000, reason="seed")
    approval = pending_request(target=user, requester=staff, credits=-12_000)

    decide(logged_in(approver), approval.pk, "_approve")

    row = CreditTransaction.objects.get(kind=TransactionKind.ADJUSTMENT)
    assert (row.amount, row.actor_id, row.balance_after) == (-12_000, approver.id, 18_000)
    assert CreditApprovalRequest.objects.get().status == ApprovalStatus.APPROVED


def test_the_requester_can_neither_approve_nor_reject_their_own_request(staff, user):
    approval = pending_request(target=user, requester=staff)
    client = logged_in(staff)

    page = client.get(f"/admin/billing/creditapprovalrequest/{approval.pk}/change/")
    assert b'id="decision-form"' not in page.content and b"another Finance user must" in page.content
    for decision in ("_approve", "_reject"):
        response = decide(client, approval.pk, decision, note="my own")
        messages = said(response)
        assert any("You requested this change" in m for m in messages)
    with pytest.raises(approvals.OwnRequest):
        approvals.approve_request(request_id=approval.pk, approver_id=staff.id)

    assert CreditApprovalRequest.objects.get().status == ApprovalStatus.PENDING
    assert not CreditTransaction.objects.exists()


def test_a_finance_user_cannot_approve_a_change_to_their_own_credits(staff, approver):
    approval = pending_request(target=approver, requester=staff)

    response = decide(logged_in(approver), approval.pk, "_approve")

    messages = said(response)
    assert any("changes your own credits" in m for m in messages)
    with pytest.raises(approvals.OwnRequest):
        approvals.reject_request(request_id=approval.pk, approver_id=approver.id, note="no thanks")
    assert CreditApprovalRequest.objects.get().status == ApprovalStatus.PENDING
    assert balance(approver) == 0 and not CreditTransaction.objects.exists()


def test_the_database_refuses_a_decision_by_the_requester(staff, user):
    approval = pending_request(target=user, requester=staff)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditApprovalRequest.objects.filter(pk=approval.pk).update(
            status=ApprovalStatus.REJECTED, decided_by=staff, decided_at=timezone.now()
        )


def test_a_rejection_moves_nothing_and_says_why(staff, approver, user):
    approval = pending_request(target=user, requester=staff)
    client = logged_in(approver)

    without_note = decide(client, approval.pk, "_reject")
    assert any("note is required" in m for m in said(without_note))
    assert CreditApprovalRequest.objects.get().status == ApprovalStatus.PENDING

    decide(client, approval.pk, "_reject", note="not in the contract")
    decide(client, approval.pk, "_approve")  # too late: decided once

    approval.refresh_from_db()
    assert (approval.status, approval.decided_by, approval.decision_note, approval.transaction) == (
        ApprovalStatus.REJECTED,
        approver,
        "not in the contract",
        None,
    )
    assert balance(user) == 0 and not CreditTransaction.objects.exists()
    assert "Rejected request" in LogEntry.objects.get(object_id=str(approval.pk)).get_change_message()


def test_a_debit_the_wallet_can_no_longer_cover_stays_pending(staff, approver, user):
    ledger.grant(user_id=user.id, amount=20_000, reason="seed")
    approval = pending_request(target=user, requester=staff, credits=-15_000)
    ledger.charge(user_id=user.id, amount=10_000, agent_id="profile-my-data")  # spent meanwhile

    response = decide(logged_in(approver), approval.pk, "_approve")

    assert any("only 10000 credits are available" in m for m in said(response))
    assert CreditApprovalRequest.objects.get().status == ApprovalStatus.PENDING
    assert balance(user) == 10_000
    assert "Not approved" in LogEntry.objects.get(object_id=str(approval.pk)).get_change_message()


def test_only_finance_with_the_approval_permission_decides_by_csrf_protected_post(staff, user, approver):
    approval = pending_request(target=user, requester=staff)
    url = f"/admin/billing/creditapprovalrequest/{approval.pk}/decide/"
    viewer = StaffFactory()
    viewer.groups.add(Group.objects.get(name=FINANCE_VIEWER))

    assert logged_in(viewer).get(f"/admin/billing/creditapprovalrequest/{approval.pk}/change/").status_code == 200
    assert logged_in(viewer).post(url, {"_approve": "1"}).status_code == 403
    assert logged_in(StaffFactory()).post(url, {"_approve": "1"}).status_code == 403
    assert logged_in(approver).get(url).status_code == 405
    csrf_checked = Client(enforce_csrf_checks=True)
    csrf_checked.force_login(approver)
    assert csrf_checked.post(url, {"_approve": "1"}).status_code == 403

    assert CreditApprovalRequest.objects.get().status == ApprovalStatus.PENDING
    assert not CreditTransaction.objects.exists()
    assert Group.objects.get(name=FINANCE).permissions.filter(codename="approve_credit_requests").exists()


def test_every_request_and_decision_is_listed_with_filters(staff, approver, user):
    first = pending_request(target=user, requester=staff, reason="first")
    second = pending_request(target=user, requester=staff, reason="second")
    pending_request(target=user, requester=staff, reason="third")
    approvals.approve_request(request_id=first.pk, approver_id=approver.id)
    approvals.reject_request(request_id=second.pk, approver_id=approver.id, note="duplicate")
    client = logged_in(approver)

    listing = client.get("/admin/billing/creditapprovalrequest/")
    pending = client.get("/admin/billing/creditapprovalrequest/", {"status__exact": "pending"})
    rejected = client.get("/admin/billing/creditapprovalrequest/", {"status__exact": "rejected"})

    assert listing.status_code == 200 and listing.context["cl"].result_count == 3
    assert [a.reason for a in pending.context["cl"].result_list] == ["third"]
    assert [a.decided_by for a in rejected.context["cl"].result_list] == [approver]
    assert client.get(f"/admin/billing/creditapprovalrequest/{first.pk}/change/").status_code == 200


# --- the admin credits form ----------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["grant", "debit"])
def test_the_admin_form_above_the_threshold_creates_one_request(staff, approver, user, direction):
    ledger.grant(user_id=user.id, amount=50_000, reason="seed")
    client = logged_in(staff)
    url = f"/admin/users/user/{user.pk}/credits/{direction}/"
    assert b'id="approval-threshold"' in client.get(url).content
    form = {"credits": 40_000, "reason": "Annual contract", "idempotency_key": "form-big"}

    response = client.post(url, form)
    client.post(url, form)  # a double submit

    assert response.status_code == 302
    messages = said(response)
    assert any("awaits approval by another Finance user" in m for m in messages)
    approval = CreditApprovalRequest.objects.get()
    sign = 1 if direction == "grant" else -1
    assert (approval.credits, approval.requested_by, approval.idempotency_key) == (
        sign * 40_000,
        staff,
        "admin-form-big",
    )
    assert balance(user) == 50_000 and CreditTransaction.objects.count() == 1

    decide(logged_in(approver), approval.pk, "_approve")
    assert balance(user) == 50_000 + sign * 40_000


# --- concurrency -----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_decisions_decide_each_request_exactly_once(figures):
    requester, target = finance_user(), UserFactory()
    deciders = [finance_user() for _ in range(4)]
    requests = [pending_request(target=target, requester=requester, reason=f"r{n}") for n in range(6)]

    def decide_at_once(job):
        approval, decider, approve = job
        try:
            if approve:
                approvals.approve_request(request_id=approval.pk, approver_id=decider.id)
            else:
                approvals.reject_request(request_id=approval.pk, approver_id=decider.id, note="race")
        except approvals.AlreadyDecided:
            return approval.pk, "too late"
        return approval.pk, "approved" if approve else "rejected"

    # Thread i is decider i; all four take the same request at the same moment (three approve, one rejects).
    jobs = [(approval, decider, i < 3) for approval in requests for i, decider in enumerate(deciders)]
    outcomes = in_threads(jobs, decide_at_once, threads=len(deciders))

    per_request = {pk: Counter(o for p, o in outcomes if p == pk) for pk in (a.pk for a in requests)}
    figures(f"approvals: 6 requests × 4 concurrent deciders → {Counter(o for _, o in outcomes)}")
    assert all(c["too late"] == 3 and c["approved"] + c["rejected"] == 1 for c in per_request.values()), per_request
    approved = CreditApprovalRequest.objects.filter(status=ApprovalStatus.APPROVED)
    assert CreditTransaction.objects.count() == approved.count()
    assert balance(target) == 20_000 * approved.count()
    assert not CreditApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).exists()
