"""Spend caps: at most so many credits consumed per UTC day and per calendar month.

The user sets their own limits; Finance may set ceilings the user cannot raise; the lower of the
two applies. A wallet counts what charges and pending holds took in the current day and month
(`spent_day_credits` for `spent_day`, `spent_month_credits` for `spent_month`): a charge or hold
counts when it is made, a hold's unused part is given back when it is captured or released in the
same period. The rule is part of the debit's own conditional UPDATE of the wallet row
(`debit_sql`), so it is checked under the same row lock as the balance: concurrent charges can
never pass a cap together, and it costs no statement of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from billing.ledger.errors import SpendCapReached
from billing.models import Wallet

PERIODS = ("daily", "monthly")


def _lower(a: str, b: str) -> str:
    """The lower of two nullable limits (SQL); NULL when neither is set."""
    return f"(CASE WHEN {a} IS NULL THEN {b} WHEN {b} IS NULL THEN {a} WHEN {a} < {b} THEN {a} ELSE {b} END)"


DAILY_CAP = _lower("daily_limit_credits", "finance_daily_limit_credits")
MONTHLY_CAP = _lower("monthly_limit_credits", "finance_monthly_limit_credits")


def periods(now: datetime) -> tuple[date, date]:
    """The UTC day and the first day of the UTC month `now` falls in."""
    today = now.astimezone(UTC).date()
    return today, today.replace(day=1)


def debit_sql(amount_param: str = "%s", day_param: str = "%s", month_param: str = "%s") -> tuple[str, str]:
    """(SET clause, WHERE clause) counting a debit of `amount_param` against the caps, for a
    conditional UPDATE of the wallet row; their parameters come from `debit_params` — or, with
    all three given as SQL (variables of the plan holding the amount and `period_params`), none."""
    spent_day = f"(CASE WHEN spent_day = {day_param} THEN spent_day_credits ELSE 0 END)"
    spent_month = f"(CASE WHEN spent_month = {month_param} THEN spent_month_credits ELSE 0 END)"
    assignments = (
        f"spent_day_credits = {spent_day} + {amount_param}, spent_day = {day_param}, "
        f"spent_month_credits = {spent_month} + {amount_param}, spent_month = {month_param}"
    )
    condition = (
        f"({DAILY_CAP} IS NULL OR {spent_day} + {amount_param} <= {DAILY_CAP}) "
        f"AND ({MONTHLY_CAP} IS NULL OR {spent_month} + {amount_param} <= {MONTHLY_CAP})"
    )
    return assignments, condition


def period_params(now: datetime) -> tuple[Any, Any]:
    """The day and month `now` counts in (`periods`), as the database takes them."""
    adapt = transaction.get_connection().ops.adapt_datefield_value
    day, month = periods(now)
    return adapt(day), adapt(month)


def debit_params(now: datetime, amount: Any) -> tuple[list, list]:
    """The parameters of `debit_sql`'s SET clause and WHERE clause, for a debit of `amount`."""
    day, month = period_params(now)
    return [day, amount, day, month, amount, month], [day, amount, month, amount]


def give_back_sql(*, held_at: str, unused: str) -> str:
    """A SET clause giving `unused` credits of a hold made at `held_at` (SQL) back to the
    counters of its period, if that period is still the one counted."""
    if transaction.get_connection().vendor == "mysql":
        day, month = f"DATE({held_at})", f"DATE_FORMAT({held_at}, '%%Y-%%m-01')"
    else:
        day, month = f"DATE({held_at})", f"DATE({held_at}, 'start of month')"
    return (
        f"spent_day_credits = CASE WHEN spent_day = {day} AND spent_day_credits >= {unused} "
        f"THEN spent_day_credits - {unused} ELSE spent_day_credits END, "
        f"spent_month_credits = CASE WHEN spent_month = {month} AND spent_month_credits >= {unused} "
        f"THEN spent_month_credits - {unused} ELSE spent_month_credits END"
    )


@dataclass(frozen=True)
class CapStatus:
    period: str
    limit: int | None  # the user's own
    ceiling: int | None  # Finance's
    cap: int | None  # the lower of the two: what applies
    spent: int
    resets_at: datetime


def status(wallet: Wallet, now: datetime | None = None) -> list[CapStatus]:
    """Each period's limits, what was spent in it and when it resets."""
    now = now or timezone.now()
    today, month = periods(now)
    next_day = datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC)
    next_month = datetime.combine((month + timedelta(days=32)).replace(day=1), time.min, tzinfo=UTC)
    out = []
    for period, own, ceiling, spent, reset in (
        ("daily", wallet.daily_limit_credits, wallet.finance_daily_limit_credits, _spent_day(wallet, today), next_day),
        (
            "monthly",
            wallet.monthly_limit_credits,
            wallet.finance_monthly_limit_credits,
            wallet.spent_month_credits if wallet.spent_month == month else 0,
            next_month,
        ),
    ):
        caps = [c for c in (own, ceiling) if c is not None]
        out.append(CapStatus(period, own, ceiling, min(caps) if caps else None, spent, reset))
    return out


def _spent_day(wallet: Wallet, today: date) -> int:
    return wallet.spent_day_credits if wallet.spent_day == today else 0


def refuse_if_over(wallet: Wallet, amount: int, now: datetime | None = None) -> None:
    """`SpendCapReached` if `amount` more would pass a cap (explains a refused debit; the rule
    itself is `debit_sql`'s)."""
    for cap in status(wallet, now):
        if cap.cap is not None and cap.spent + amount > cap.cap:
            raise SpendCapReached(period=cap.period, cap=cap.cap, spent=cap.spent, resets_at=cap.resets_at)
