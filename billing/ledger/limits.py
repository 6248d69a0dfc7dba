"""Setting a wallet's limits: spend caps and Finance's ceilings (`billing.ledger.caps`), the
low-balance and auto-recharge thresholds (`billing.ledger.thresholds`)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from billing.ledger import thresholds
from billing.ledger.errors import InvalidLedgerRequest, SpendLimitAboveCeiling
from billing.ledger.posting import _lock_wallet
from billing.ledger.retry import _money_verb
from billing.models import Wallet

MAX_LIMIT = 10**15


def _check_limit(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_LIMIT:
        raise InvalidLedgerRequest(f"{name} must be a whole number of credits (0 or more) or null.")
    return value


@_money_verb
def set_limits(
    *, user_id: int, daily_limit_credits: int | None, monthly_limit_credits: int | None, by_finance: bool = False
) -> Wallet:
    """Set the user's own caps (or, `by_finance`, Finance's ceilings); None removes one. A user's
    limit above Finance's ceiling is refused: the ceiling is theirs to lower, not to raise."""
    daily = _check_limit(daily_limit_credits, "daily_limit_credits")
    monthly = _check_limit(monthly_limit_credits, "monthly_limit_credits")
    wallet = _lock_wallet(user_id)
    if by_finance:
        fields = {"finance_daily_limit_credits": daily, "finance_monthly_limit_credits": monthly}
    else:
        for name, value, ceiling in (
            ("daily_limit_credits", daily, wallet.finance_daily_limit_credits),
            ("monthly_limit_credits", monthly, wallet.finance_monthly_limit_credits),
        ):
            if value is not None and ceiling is not None and value > ceiling:
                raise SpendLimitAboveCeiling(field=name, ceiling=ceiling)
        fields = {"daily_limit_credits": daily, "monthly_limit_credits": monthly}
    Wallet.objects.filter(pk=wallet.pk).update(**fields, updated_at=timezone.now())
    wallet.refresh_from_db()
    return wallet


@_money_verb
def set_thresholds(*, user_id: int, **fields: Any) -> Wallet:
    """Set the wallet's `low_balance_threshold_credits` and/or `recharge_threshold_credits`
    (None: the default / auto-recharge off); a changed recharge threshold is armed. The available
    credits are checked against them at once, as a debit would: a wallet already below a new
    threshold alerts (and recharges) now, not at its next debit."""
    allowed = {"low_balance_threshold_credits", "recharge_threshold_credits"}
    if unknown := fields.keys() - allowed:
        raise TypeError(f"Not thresholds: {sorted(unknown)}")
    wallet = _lock_wallet(user_id)
    if (
        "recharge_threshold_credits" in fields
        and fields["recharge_threshold_credits"] != wallet.recharge_threshold_credits
    ):
        fields["recharge_armed"] = True  # a new threshold; saving the same one again changes nothing
    Wallet.objects.filter(pk=wallet.pk).update(**fields, updated_at=timezone.now())
    thresholds.watch(wallet, debit=True)
    wallet.refresh_from_db()
    return wallet
