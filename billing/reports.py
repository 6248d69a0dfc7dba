"""Finance report selectors over a date range (UTC days, `end` inclusive).

Shared by the admin reports page and its CSV downloads; each returns plain rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce, TruncDate

from billing.models import (
    CreditHold,
    CreditTransaction,
    HoldStatus,
    Purchase,
    PurchaseStatus,
    StripeWebhookEvent,
    TransactionKind,
    Wallet,
    WebhookEventStatus,
)


@dataclass(frozen=True)
class Period:
    start: date
    end: date

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def until(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]


def _transactions(period: Period):
    return CreditTransaction.objects.filter(created_at__gte=period.since, created_at__lt=period.until)


def credits_by_day(*, period: Period) -> list[dict]:
    """Per day: credits purchased, granted (incl. positive adjustments) and consumed by charges."""
    rows = (
        _transactions(period)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            purchased=Coalesce(Sum("amount", filter=Q(kind=TransactionKind.PURCHASE)), 0),
            granted=Coalesce(Sum("amount", filter=Q(kind__in=[TransactionKind.GRANT], amount__gt=0)), 0),
            consumed=Coalesce(Sum("amount", filter=Q(kind=TransactionKind.CHARGE)), 0),
        )
    )
    by_day = {row["day"]: row for row in rows}
    return [
        {
            "day": day.isoformat(),
            "purchased": by_day.get(day, {}).get("purchased", 0),
            "granted": by_day.get(day, {}).get("granted", 0),
            "consumed": -by_day.get(day, {}).get("consumed", 0),
        }
        for day in period.days()
    ]


def revenue_by_package(*, period: Period) -> list[dict]:
    rows = (
        Purchase.objects.filter(status=PurchaseStatus.PAID, paid_at__gte=period.since, paid_at__lt=period.until)
        .values("package_id", "currency")
        .annotate(purchases=Count("id"), credits=Sum("credits"), revenue_cents=Sum("amount_cents"))
        .order_by("-revenue_cents")
    )
    return [dict(row) for row in rows]


def usage_by_agent(*, period: Period) -> list[dict]:
    """The runbook's "Agent usage": charges and credits per agent."""
    rows = (
        _transactions(period)
        .filter(kind=TransactionKind.CHARGE)
        .values("agent_id")
        .annotate(charges=Count("id"), credits=-Sum("amount"), users=Count("wallet", distinct=True))
        .order_by("-credits")
    )
    return [dict(row) for row in rows]


def webhook_stats(*, period: Period) -> dict:
    counts = dict(
        StripeWebhookEvent.objects.filter(received_at__gte=period.since, received_at__lt=period.until)
        .values_list("status")
        .annotate(n=Count("id"))
    )
    total = sum(counts.values())
    ok = counts.get(WebhookEventStatus.PROCESSED, 0) + counts.get(WebhookEventStatus.IGNORED, 0)
    return {
        "total": total,
        **{status: counts.get(status, 0) for status in WebhookEventStatus.values},
        "success_rate": round(ok / total, 4) if total else None,
    }


def failed_payments(*, period: Period) -> list[dict]:
    rows = Purchase.objects.filter(
        status=PurchaseStatus.FAILED, updated_at__gte=period.since, updated_at__lt=period.until
    ).values(
        "stripe_checkout_session_id",
        "user__email",
        "package_id",
        "amount_cents",
        "currency",
        "failure_reason",
        "updated_at",
    )
    return [dict(row) for row in rows.order_by("-updated_at")]


def credits_held_now() -> dict:
    totals = Wallet.objects.aggregate(
        held=Coalesce(Sum("held_credits"), 0), shortfall=Coalesce(Sum("shortfall_credits"), 0)
    )
    return {
        "held_credits": totals["held"],
        "pending_holds": CreditHold.objects.filter(status=HoldStatus.PENDING).count(),
        "shortfall_credits": totals["shortfall"],
    }


def top_users(*, period: Period, limit: int = 10) -> list[dict]:
    rows = (
        _transactions(period)
        .filter(kind=TransactionKind.CHARGE)
        .values("wallet__user__email")
        .annotate(credits=-Sum("amount"), charges=Count("id"))
        .order_by("-credits")[:limit]
    )
    return [{"email": row["wallet__user__email"], "credits": row["credits"], "charges": row["charges"]} for row in rows]
