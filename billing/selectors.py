"""Reads shared by the API, the admin and reports."""

from django.db.models import QuerySet

from billing.models import CreditTransaction, Wallet

RECENT_TRANSACTIONS = 20


def wallet_for_user(*, user_id: int) -> Wallet:
    """The user's wallet, created empty on first sight."""
    wallet, _ = Wallet.objects.get_or_create(user_id=user_id)
    return wallet


def transactions_for_user(*, user_id: int) -> QuerySet[CreditTransaction]:
    return CreditTransaction.objects.filter(wallet__user_id=user_id).order_by("-created_at", "-id")


def wallet_summary(*, user_id: int) -> dict:
    wallet = wallet_for_user(user_id=user_id)
    recent = list(transactions_for_user(user_id=user_id)[:RECENT_TRANSACTIONS])
    return {
        "balance_credits": wallet.balance_credits,
        "held_credits": wallet.held_credits,
        "available_credits": wallet.available_credits,
        "transactions": recent,
    }
