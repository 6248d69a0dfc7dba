"""Reads shared by the API, the admin and reports."""

from datetime import timedelta

from django.db.models import Prefetch, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from billing.ledger import caps
from billing.ledger.lots import BURN_ORDER_TERMS
from billing.models import CreditDraw, CreditLot, CreditTransaction, Wallet

RECENT_TRANSACTIONS = 20
EXPIRING_SOON_DAYS = 30

# The ledger's own burn order (the next debit takes the first lot), for the ORM.
LOT_BURN_ORDER = tuple(RawSQL(term.format(t=""), []) for term in BURN_ORDER_TERMS)


def wallet_for_user(*, user_id: int) -> Wallet:
    """The user's wallet, created empty on first sight."""
    wallet, _ = Wallet.objects.get_or_create(user_id=user_id)
    return wallet


def transactions_for_user(*, user_id: int) -> QuerySet[CreditTransaction]:
    return CreditTransaction.objects.filter(wallet__user_id=user_id).order_by("-created_at", "-id")


def draws_prefetch(lookup: str = "draws") -> Prefetch:
    """A ledger row's draws with their lots, in the order they were taken (burn order)."""
    return Prefetch(lookup, queryset=CreditDraw.objects.select_related("lot").order_by("id"))


def with_lots(rows: QuerySet[CreditTransaction]) -> QuerySet[CreditTransaction]:
    """Ledger rows with the lot each credit-in opened and the draws of each debit: two queries
    for any number of rows."""
    return rows.select_related("lot").prefetch_related(draws_prefetch())


def open_lots(*, wallet_id: int) -> QuerySet[CreditLot]:
    """The wallet's lots that still hold credits, in burn order (the next debit takes the first)."""
    return CreditLot.objects.filter(wallet_id=wallet_id, is_open=True).order_by(*LOT_BURN_ORDER)


def expiring_soon(lots: list[CreditLot], *, days: int = EXPIRING_SOON_DAYS) -> dict:
    """Remaining credits of `lots` that expire within `days` (or are past expiry, not yet swept),
    and the soonest such expiry."""
    horizon = timezone.now() + timedelta(days=days)
    expiring = [lot for lot in lots if lot.expires_at is not None and lot.expires_at <= horizon]
    return {
        "credits": sum(lot.remaining_credits for lot in expiring),
        "first_expires_at": min((lot.expires_at for lot in expiring), default=None),
        "within_days": days,
    }


def wallet_summary(*, user_id: int) -> dict:
    wallet = wallet_for_user(user_id=user_id)
    recent = list(with_lots(transactions_for_user(user_id=user_id))[:RECENT_TRANSACTIONS])
    lots = list(open_lots(wallet_id=wallet.id))
    return {
        "balance_credits": wallet.balance_credits,
        "held_credits": wallet.held_credits,
        "available_credits": wallet.available_credits,
        "transactions": recent,
        "lots": lots,
        "expiring_soon": expiring_soon(lots),
    }


def limits_summary(*, wallet: Wallet) -> dict:
    """The wallet's spend limits and, per period, the cap that applies, what was spent, when it resets."""
    periods = {
        cap.period: {"cap": cap.cap, "spent": cap.spent, "resets_at": cap.resets_at} for cap in caps.status(wallet)
    }
    return {
        "daily_limit_credits": wallet.daily_limit_credits,
        "monthly_limit_credits": wallet.monthly_limit_credits,
        "finance_daily_limit_credits": wallet.finance_daily_limit_credits,
        "finance_monthly_limit_credits": wallet.finance_monthly_limit_credits,
        **periods,
    }
