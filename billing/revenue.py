"""Revenue from the lots: what finance can book, by UTC day and month, exact to the cent.

A paid lot's cost basis is what was paid for all of its credits (`cost_basis_cents` for
`original_credits`). The first n credits taken from it are worth ⌊n × basis / original⌋ cents,
so each draw is worth the difference that draw makes, in the order the draws were written —
and however a lot is used up, its draws and its remainder add up to its basis exactly:

- **recognised**: paid credits consumed by charges (agent runs, captures);
- **breakage**: paid credits that expired unused;
- **refunded**: paid credits taken back by claw-backs (refunds, disputes, shortfall collection);
- **adjusted**: paid credits removed by staff debit adjustments;
- **deferred**: what the paid credits still in lots are worth (a liability until used).

Promotional credits carry no revenue; they are counted in credits: granted, consumed, expired,
and taken otherwise (claw-backs, debit adjustments).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date

from django.db.models import Sum
from django.db.models.functions import TruncDate

from billing.models import CreditDraw, CreditLot, LotCategory, TransactionKind
from billing.reports import Period

# Which revenue column a draw of each kind of ledger row lands in.
REVENUE_OF_KIND = {
    TransactionKind.CHARGE: "recognised",
    TransactionKind.EXPIRY: "breakage",
    TransactionKind.CLAWBACK: "refunded",
    TransactionKind.ADJUSTMENT: "adjusted",
}
PROMOTIONAL_OF_KIND = {TransactionKind.CHARGE: "consumed", TransactionKind.EXPIRY: "expired"}
REVENUE_COLUMNS = ("recognised", "breakage", "refunded", "adjusted")


def cents_for(*, used_before: int, credits: int, basis: int, original: int) -> int:
    """What `credits` more credits of a lot are worth after `used_before` were taken."""
    return (used_before + credits) * basis // original - used_before * basis // original


@dataclass(frozen=True)
class RevenueDay:
    day: date
    currency: str
    recognised: int = 0
    breakage: int = 0
    refunded: int = 0
    adjusted: int = 0
    paid_in: int = 0  # cost basis of paid lots that came in that day
    deferred_end: int = 0  # deferred revenue at the end of the day


def revenue_by_day(*, period: Period) -> list[dict]:
    """Per UTC day and currency: cents recognised, breakage, refunded, adjusted, paid in, and
    deferred revenue at the end of the day. Exact: deferred(end of day) = deferred(before) +
    paid in − recognised − breakage − refunded − adjusted."""
    lots = {
        row["id"]: row
        for row in CreditLot.objects.filter(category=LotCategory.PAID, created_at__lt=period.until).values(
            "id", "original_credits", "cost_basis_cents", "currency", "created_at"
        )
    }
    # Credits taken from each lot before the period, then every draw inside it in write order.
    used = dict(
        CreditDraw.objects.filter(lot_id__in=lots, transaction__created_at__lt=period.since)
        .values_list("lot_id")
        .annotate(total=Sum("credits"))
    )
    deferred: dict[str, int] = defaultdict(int)
    for lot_id, lot in lots.items():
        if lot["created_at"] < period.since:
            deferred[lot["currency"]] += lot["cost_basis_cents"] - cents_for(
                used_before=0,
                credits=used.get(lot_id, 0),
                basis=lot["cost_basis_cents"],
                original=lot["original_credits"],
            )
    days: dict[tuple[date, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for lot in lots.values():
        if lot["created_at"] >= period.since:
            days[(lot["created_at"].date(), lot["currency"])]["paid_in"] += lot["cost_basis_cents"]
    draws = (
        CreditDraw.objects.filter(
            lot_id__in=lots, transaction__created_at__gte=period.since, transaction__created_at__lt=period.until
        )
        .order_by("id")
        .values_list("lot_id", "credits", "transaction__kind", "transaction__created_at")
    )
    for lot_id, credits, kind, at in draws.iterator(chunk_size=5000):
        lot = lots[lot_id]
        worth = cents_for(
            used_before=used.get(lot_id, 0),
            credits=credits,
            basis=lot["cost_basis_cents"],
            original=lot["original_credits"],
        )
        used[lot_id] = used.get(lot_id, 0) + credits
        days[(at.date(), lot["currency"])][REVENUE_OF_KIND[kind]] += worth
    currencies = sorted({c for _, c in days} | set(deferred)) or ["usd"]
    rows = []
    for currency in currencies:
        running = deferred[currency]
        for day in period.days():
            figures = days.get((day, currency), {})
            running += figures.get("paid_in", 0) - sum(figures.get(column, 0) for column in REVENUE_COLUMNS)
            rows.append(
                {
                    "day": day.isoformat(),
                    "currency": currency,
                    **{column: figures.get(column, 0) for column in (*REVENUE_COLUMNS, "paid_in")},
                    "deferred_end": running,
                }
            )
    return rows


def by_month(rows: list[dict]) -> list[dict]:
    """`revenue_by_day` rows summed per calendar month (deferred: at the month's last day)."""
    months: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["day"][:7], row["currency"])
        month = months.setdefault(
            key, {"month": key[0], "currency": key[1], **dict.fromkeys((*REVENUE_COLUMNS, "paid_in"), 0)}
        )
        for column in (*REVENUE_COLUMNS, "paid_in"):
            month[column] += row[column]
        month["deferred_end"] = row["deferred_end"]
    return list(months.values())


def promotional_by_day(*, period: Period) -> list[dict]:
    """Per UTC day: promotional credits granted, consumed (charges), expired and otherwise taken."""
    granted = dict(
        CreditLot.objects.filter(
            category=LotCategory.PROMOTIONAL, created_at__gte=period.since, created_at__lt=period.until
        )
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(total=Sum("original_credits"))
    )
    taken: dict[tuple[date, str], int] = defaultdict(int)
    for day, kind, credits in (
        CreditDraw.objects.filter(
            lot__category=LotCategory.PROMOTIONAL,
            transaction__created_at__gte=period.since,
            transaction__created_at__lt=period.until,
        )
        .annotate(day=TruncDate("transaction__created_at"))
        .values_list("day", "transaction__kind")
        .annotate(total=Sum("credits"))
    ):
        taken[(day, PROMOTIONAL_OF_KIND.get(kind, "other"))] += credits
    return [
        {
            "day": day.isoformat(),
            "granted": granted.get(day, 0),
            "consumed": taken[(day, "consumed")],
            "expired": taken[(day, "expired")],
            "other": taken[(day, "other")],
        }
        for day in period.days()
    ]


def deferred_now() -> list[dict]:
    """Deferred revenue now, per currency, from the lots' remaining credits (no history needed)."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"credits": 0, "cents": 0})
    for remaining, original, basis, currency in CreditLot.objects.filter(
        category=LotCategory.PAID, remaining_credits__gt=0
    ).values_list("remaining_credits", "original_credits", "cost_basis_cents", "currency"):
        totals[currency]["credits"] += remaining
        totals[currency]["cents"] += basis - cents_for(
            used_before=0, credits=original - remaining, basis=basis, original=original
        )
    return [
        {"currency": currency, "paid_credits": t["credits"], "deferred_cents": t["cents"]}
        for currency, t in totals.items()
    ]
