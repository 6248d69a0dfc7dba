"""Spend caps: per UTC day and calendar month, the user's own and Finance's ceiling, checked in the
debit's own statement — exact under concurrency, holds counted when made and given back unused."""

from collections import Counter
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest

from billing import ledger
from billing.models import Wallet
from billing.reconcile import reconcile
from tests.concurrency import in_threads
from tests.conftest import bearer_client
from tests.factories import StaffFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC)


def at(moment: datetime):
    return mock.patch("django.utils.timezone.now", return_value=moment)


@pytest.fixture
def funded():
    user = UserFactory()
    ledger.grant(user_id=user.id, amount=10_000, reason="funds")
    return user


def charge(user, amount):
    return ledger.charge(user_id=user.id, amount=amount, agent_id="a")


def test_a_charge_past_the_daily_cap_is_refused_with_the_figures(funded):
    ledger.set_limits(user_id=funded.id, daily_limit_credits=100, monthly_limit_credits=None)
    with at(NOON):
        charge(funded, 60)
        charge(funded, 40)
        with pytest.raises(ledger.SpendCapReached) as refused:
            charge(funded, 1)
    assert refused.value.extra() == {
        "period": "daily",
        "cap": 100,
        "spent": 100,
        "resets_at": "2026-12-01T00:00:00+00:00",
    }
    assert Wallet.objects.get(user=funded).balance_credits == 9_900


def test_the_daily_cap_resets_at_utc_midnight_and_the_monthly_one_on_the_first(funded):
    ledger.set_limits(user_id=funded.id, daily_limit_credits=100, monthly_limit_credits=150)
    with at(NOON):
        charge(funded, 100)
    with at(NOON + timedelta(hours=12)):  # 1 December, 00:00 UTC: a new day and a new month
        charge(funded, 100)
        with pytest.raises(ledger.SpendCapReached):
            charge(funded, 1)
    with at(NOON + timedelta(days=1, hours=12)):  # 2 December: the day resets, the month does not
        charge(funded, 50)
        with pytest.raises(ledger.SpendCapReached) as refused:
            charge(funded, 1)
    assert (refused.value.period, refused.value.cap, refused.value.spent) == ("monthly", 150, 150)


def test_a_hold_counts_when_made_and_gives_back_what_it_did_not_use(funded):
    ledger.set_limits(user_id=funded.id, daily_limit_credits=100, monthly_limit_credits=None)
    with at(NOON):
        held = ledger.hold(user_id=funded.id, amount=80, agent_id="a").hold
        with pytest.raises(ledger.SpendCapReached):
            charge(funded, 30)  # 80 reserved + 30 > 100
        ledger.capture(hold_id=held.id, amount=50)  # the 30 it did not use come back: 50 spent
        second = ledger.hold(user_id=funded.id, amount=40, agent_id="a").hold  # 90
        with pytest.raises(ledger.SpendCapReached):
            charge(funded, 11)
        ledger.release(hold_id=second.id)  # 50 again
        charge(funded, 50)
    assert Wallet.objects.get(user=funded).spent_day_credits == 100


def test_the_counters_are_exact_after_holds_captures_and_releases(funded):
    with at(NOON):
        ledger.charge(user_id=funded.id, amount=10, agent_id="a")
        kept = ledger.hold(user_id=funded.id, amount=20, agent_id="a").hold
        ledger.capture(hold_id=kept.id, amount=5)
        dropped = ledger.hold(user_id=funded.id, amount=7, agent_id="a").hold
        ledger.release(hold_id=dropped.id)
    wallet = Wallet.objects.get(user=funded)
    assert (wallet.spent_day_credits, wallet.spent_month_credits) == (15, 15)


def test_a_hold_released_the_next_day_does_not_lower_the_new_days_count(funded):
    ledger.set_limits(user_id=funded.id, daily_limit_credits=100, monthly_limit_credits=None)
    with at(NOON):
        held = ledger.hold(user_id=funded.id, amount=60, agent_id="a").hold
    with at(NOON + timedelta(days=1, hours=1)):
        charge(funded, 90)
        ledger.release(hold_id=held.id)
        with pytest.raises(ledger.SpendCapReached):
            charge(funded, 11)


def test_finance_sets_a_ceiling_the_user_cannot_raise(funded):
    ledger.set_limits(user_id=funded.id, daily_limit_credits=500, monthly_limit_credits=None, by_finance=True)
    with pytest.raises(ledger.SpendLimitAboveCeiling):
        ledger.set_limits(user_id=funded.id, daily_limit_credits=501, monthly_limit_credits=None)
    ledger.set_limits(user_id=funded.id, daily_limit_credits=None, monthly_limit_credits=None)
    with at(NOON):
        charge(funded, 500)  # no own cap: the ceiling applies
        with pytest.raises(ledger.SpendCapReached):
            charge(funded, 1)


@pytest.mark.django_db(transaction=True)
def test_16_threads_charging_against_a_daily_cap_never_pass_it():
    user = UserFactory()
    ledger.grant(user_id=user.id, amount=100_000, reason="funds")
    ledger.set_limits(user_id=user.id, daily_limit_credits=7 * 50, monthly_limit_credits=None)

    def work(_):
        try:
            ledger.charge(user_id=user.id, amount=7, agent_id="a")
            return "ok"
        except ledger.SpendCapReached:
            return "cap"

    outcomes = Counter(in_threads(list(range(200)), work, threads=16))
    wallet = Wallet.objects.get(user=user)
    assert outcomes == {"ok": 50, "cap": 150}
    assert (wallet.spent_day_credits, wallet.balance_credits) == (350, 100_000 - 350)
    assert reconcile() == []


# --- HTTP -----------------------------------------------------------------------------------------


def test_limits_endpoint_reads_and_sets_the_users_caps(funded):
    client = bearer_client(funded)
    assert (
        client.put(
            "/billing/limits", {"daily_limit_credits": 30, "monthly_limit_credits": None}, format="json"
        ).status_code
        == 200
    )
    charge(funded, 25)
    body = client.get("/billing/limits").json()
    assert body["daily_limit_credits"] == 30 and body["monthly_limit_credits"] is None
    assert body["daily"]["cap"] == 30 and body["daily"]["spent"] == 25 and body["monthly"]["cap"] is None
    refused = client.post("/api/profile-my-data", {"tool_configuration": {}, "data": {"csv": "a\n1"}}, format="json")
    assert refused.status_code == 402, refused.content
    assert refused.json()["error_code"] == "BILLING_SPEND_CAP_REACHED"
    assert {"cap", "spent", "resets_at"} <= refused.json().keys()


def test_limits_refuse_bad_values_and_raising_the_ceiling_with_field_errors(funded):
    client = bearer_client(funded)
    bad = client.put("/billing/limits", {"daily_limit_credits": -1, "monthly_limit_credits": None}, format="json")
    assert bad.status_code == 400 and "daily_limit_credits" in str(bad.json())
    ledger.set_limits(user_id=funded.id, daily_limit_credits=None, monthly_limit_credits=100, by_finance=True)
    raised = client.put("/billing/limits", {"daily_limit_credits": None, "monthly_limit_credits": 101}, format="json")
    assert raised.status_code == 400 and "monthly_limit_credits" in str(raised.json())
    assert Wallet.objects.get(user=funded).monthly_limit_credits is None


def test_finance_sets_ceilings_through_the_admin_endpoint(funded):
    finance = StaffFactory(is_superuser=True)
    response = bearer_client(finance).put(
        "/billing/admin/limits",
        {"user_id": funded.id, "daily_limit_credits": 10, "monthly_limit_credits": None},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["finance_daily_limit_credits"] == 10
    assert (
        bearer_client(funded)
        .put(
            "/billing/admin/limits",
            {"user_id": funded.id, "daily_limit_credits": None, "monthly_limit_credits": None},
            format="json",
        )
        .status_code
        == 403
    )
