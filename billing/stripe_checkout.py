"""Start a Stripe Checkout for a credit package and record it as a pending purchase; grant a
purchase once it is paid (Checkout's webhook and auto-recharge's share `grant_paid_purchase`)."""

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from billing import events, ledger, stripe_client
from billing.models import Purchase, PurchaseStatus
from billing.packages import get_package
from core.errors import DomainError
from users.models import User


@dataclass(frozen=True)
class CheckoutStarted:
    purchase: Purchase
    checkout_url: str


def ensure_stripe_customer(*, user: User) -> str:
    """The user's Stripe Customer id, creating the customer once (Stripe idempotency key per user)."""
    if user.stripe_customer_id:
        return user.stripe_customer_id
    customer = stripe_client.create_customer(user_id=user.id, email=user.email)
    User.objects.filter(pk=user.pk, stripe_customer_id__isnull=True).update(stripe_customer_id=customer.id)
    user.refresh_from_db(fields=["stripe_customer_id"])
    stripe_client.mirror_after_commit(customer=customer.to_dict(for_json=True))
    return user.stripe_customer_id


class UnknownPackage(DomainError):
    error_code = "UNKNOWN_PACKAGE"


def key_digest(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def start_checkout(*, user: User, package_id: str, idempotency_key: str | None = None) -> CheckoutStarted:
    """Create a Checkout Session (mode `payment`) for the package and a pending `Purchase`.

    Nothing is credited here: credits come only from the signed webhook. The same
    `idempotency_key` returns the same session (it becomes part of Stripe's idempotency key).
    """
    package = get_package(package_id)
    if package is None:
        raise UnknownPackage(f"No credit package {package_id!r}.")
    customer_id = ensure_stripe_customer(user=user)
    session = stripe_client.create_checkout_session(
        user_id=user.id,
        customer_id=customer_id,
        package=package,
        # Stripe keys are at most 255 characters: a client's key (up to 262) goes in as its digest.
        idempotency_key=f"checkout-{user.id}-{package.package_id}-{key_digest(idempotency_key) or uuid.uuid4().hex}",
    )
    purchase, _ = Purchase.objects.get_or_create(
        stripe_checkout_session_id=session.id,
        defaults={
            "user": user,
            "package_id": package.package_id,
            "credits": package.credits,
            "amount_cents": package.price_cents,
            "currency": package.currency,
            "credits_expire_in_days": package.expires_in_days,
        },
    )
    return CheckoutStarted(purchase=purchase, checkout_url=session.url)


def grant_paid_purchase(
    purchase: Purchase, *, payment_intent_id: str | None, stripe_event_id: str
) -> ledger.LedgerResult:
    """Credit a paid purchase (locked by the caller) as a paid lot — expiring after the
    package's `credits_expire_in_days`, if any — mark it paid and emit `purchase.completed`,
    in the caller's transaction. Once per purchase: the ledger row is keyed by its reference."""
    paid_at = timezone.now()
    days = purchase.credits_expire_in_days
    result = ledger.purchase(
        user_id=purchase.user_id,
        amount=purchase.credits,
        checkout_session_id=purchase.stripe_checkout_session_id,
        payment_intent_id=payment_intent_id,
        stripe_event_id=stripe_event_id,
        package_id=purchase.package_id,
        purchase_id=purchase.id,
        amount_cents=purchase.amount_cents,
        currency=purchase.currency,
        expires_at=paid_at + timedelta(days=days) if days else None,
    )
    purchase.status = PurchaseStatus.PAID
    purchase.transaction = result.transaction
    purchase.stripe_payment_intent_id = payment_intent_id
    purchase.paid_at = paid_at
    purchase.save(update_fields=["status", "transaction", "stripe_payment_intent_id", "paid_at", "updated_at"])
    events.emit(
        "purchase.completed",
        {
            "purchase_id": purchase.id,
            "user_id": purchase.user_id,
            "package_id": purchase.package_id,
            "credits": purchase.credits,
            "amount_cents": purchase.amount_cents,
            "currency": purchase.currency,
            "balance_after": result.balance_after,
        },
        user_id=purchase.user_id,
    )
    return result
