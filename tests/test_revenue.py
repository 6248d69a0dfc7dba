"""The revenue console: deferred revenue, revenue recognised, breakage, refunds and promotional
credits from the lots, by day and month, to the cent — checked against figures worked out by
hand from the purchases' prices, and for conservation (nothing paid is lost or counted twice)."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from unittest import mock

import pytest
from django.urls import reverse

from billing import ledger, revenue
from billing.expiry import expire_due_credits
from billing.models import Purchase, PurchaseStatus
from billing.reports import Period
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
DAY1 = datetime(2026, 11, 1, 12, tzinfo=UTC)
PERIOD = Period(start=date(2026, 10, 31), end=date(2026, 11, 3))


def at(moment: datetime):
    return mock.patch("django.utils.timezone.now", return_value=moment)


def buy(user, credits: int, cents: int, session: str, expires_at=None) -> Purchase:
    purchase = Purchase.objects.create(
        user=user,
        package_id="pack",
        credits=credits,
        amount_cents=cents,
        currency="usd",
        status=PurchaseStatus.PAID,
        stripe_checkout_session_id=session,
    )
    ledger.purchase(
        user_id=user.id,
        amount=credits,
        checkout_session_id=session,
        payment_intent_id=None,
        stripe_event_id=f"evt_{session}",
        package_id="pack",
        purchase_id=purchase.id,
        amount_cents=cents,
        currency="usd",
        expires_at=expires_at,
    )
    return purchase


@pytest.fixture
def three_days():
    """Day 1: 1,000 credits bought for $9.99, 200 promotional granted, 250 charged (200 promotional,
    50 paid). Day 2: 333 charged; 300 credits bought for $4.50, expiring on day 3. Day 3: those
    300 expire unused, a refund takes back 100 of the first purchase, staff debit 7."""
    user = UserFactory()
    with at(DAY1):
        first = buy(user, 1000, 999, "cs_rev_1")
        ledger.grant(user_id=user.id, amount=200, reason="welcome")
        ledger.charge(user_id=user.id, amount=250, agent_id="a")
    with at(DAY1 + timedelta(days=1)):
        ledger.charge(user_id=user.id, amount=333, agent_id="a")
        buy(user, 300, 450, "cs_rev_2", expires_at=DAY1 + timedelta(days=1, hours=20))
    with at(DAY1 + timedelta(days=2)):
        assert expire_due_credits() == 1
        ledger.clawback(user_id=user.id, amount=100, reason="refund", idempotency_key="r", purchase_id=first.id)
        ledger.adjust(user_id=user.id, amount=-7, reason="correction")
    return user


def test_revenue_by_day_matches_the_prices_to_the_cent(three_days):
    rows = {row["day"]: row for row in revenue.revenue_by_day(period=PERIOD)}
    # The first lot: 999 cents for 1,000 credits; the first n credits used are worth ⌊n × 999 / 1000⌋.
    # Day 1: 50 paid credits used → ⌊49.95⌋ = 49. Day 2: 383 used → ⌊382.617⌋ = 382, so 333 more.
    # Day 3: the refund takes it to 483 → 482 (100 more); the debit to 490 → 489 (7 more).
    # The second lot (450 cents for 300 credits) expires whole: 450 of breakage.
    figures = lambda day: {k: rows[day][k] for k in ("paid_in", "recognised", "breakage", "refunded", "adjusted")}  # noqa: E731
    assert figures("2026-10-31") == {"paid_in": 0, "recognised": 0, "breakage": 0, "refunded": 0, "adjusted": 0}
    assert figures("2026-11-01") == {"paid_in": 999, "recognised": 49, "breakage": 0, "refunded": 0, "adjusted": 0}
    assert figures("2026-11-02") == {"paid_in": 450, "recognised": 333, "breakage": 0, "refunded": 0, "adjusted": 0}
    assert figures("2026-11-03") == {"paid_in": 0, "recognised": 0, "breakage": 450, "refunded": 100, "adjusted": 7}
    assert [rows[d]["deferred_end"] for d in sorted(rows)] == [0, 950, 1067, 510]
    # What is left (510 credits of the first lot) is worth 999 − 489 = 510 cents.
    assert revenue.deferred_now() == [{"currency": "usd", "paid_credits": 510, "deferred_cents": 510}]


def test_nothing_paid_is_lost_or_counted_twice(three_days):
    rows = revenue.revenue_by_day(period=PERIOD)
    paid_in = sum(row["paid_in"] for row in rows)
    used = sum(row[column] for row in rows for column in revenue.REVENUE_COLUMNS)
    assert paid_in == 999 + 450
    assert used + rows[-1]["deferred_end"] == paid_in


def test_a_period_starting_later_carries_the_deferred_revenue_in(three_days):
    later = revenue.revenue_by_day(period=Period(start=date(2026, 11, 2), end=date(2026, 11, 3)))
    assert [row["deferred_end"] for row in later] == [1067, 510]
    assert later[0]["recognised"] == 333  # valued from the 50 credits used before the period


def test_months_sum_the_days(three_days):
    (month,) = revenue.by_month(revenue.revenue_by_day(period=Period(start=date(2026, 11, 1), end=date(2026, 11, 3))))
    assert (month["month"], month["recognised"], month["breakage"], month["deferred_end"]) == ("2026-11", 382, 450, 510)


def test_promotional_credits_are_counted_in_credits(three_days):
    rows = {row["day"]: row for row in revenue.promotional_by_day(period=PERIOD)}
    assert rows["2026-11-01"] == {"day": "2026-11-01", "granted": 200, "consumed": 200, "expired": 0, "other": 0}


def test_the_revenue_page_and_its_csv(admin_client, three_days):
    url = reverse("finance-revenue")
    page = admin_client.get(url, {"start": "2026-10-31", "end": "2026-11-03"})
    assert page.status_code == 200
    body = page.content.decode()
    assert 'id="revenue-chart"' in body and "9.50" in body  # day 1's deferred: $9.50
    download = admin_client.get(url, {"start": "2026-10-31", "end": "2026-11-03", "download": "revenue_by_day"})
    rows = list(csv.DictReader(io.StringIO(download.content.decode())))
    assert [row["breakage"] for row in rows] == ["0", "0", "0", "450"]


def test_the_revenue_page_needs_the_finance_permission(client):
    user = UserFactory(is_staff=True)
    client.force_login(user)
    assert client.get(reverse("finance-revenue")).status_code == 403
