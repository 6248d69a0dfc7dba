"""Signed Stripe events: verified, stored once, then processed idempotently.

No outbound call to Stripe is needed to move credits: the grant is decided from the signed
payload and our own package table. Locks are taken in one order — event row, payment-intent
row, purchase row, wallet row — so concurrent deliveries serialise instead of racing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing import auto_recharge, events, ledger, metrics, stripe_client
from billing.models import Purchase, PurchaseStatus, StripePaymentIntentLock, StripeWebhookEvent, WebhookEventStatus
from billing.packages import get_package
from billing.stripe_checkout import grant_paid_purchase
from core.errors import DomainError
from users.models import User

logger = logging.getLogger("billing")

DONE = (WebhookEventStatus.PROCESSED, WebhookEventStatus.IGNORED)
CLAWBACK_TYPES = ("charge.refunded", "charge.dispute.created")


class WebhookSignatureInvalid(DomainError):
    error_code = "WEBHOOK_SIGNATURE_INVALID"


class EventRejected(Exception):
    """A genuine event we must not honour (e.g. the amount paid does not match the package).
    The event is marked `failed` with the reason for staff to review; Stripe is not asked to retry."""


@dataclass(frozen=True)
class WebhookOutcome:
    stripe_event_id: str
    status: str
    duplicate: bool = False
    event_type: str = ""
    received: bool = True  # signed and stored (what processing did is `status`)


def verify_event(*, payload: bytes, signature: str | None) -> dict:
    """Check `Stripe-Signature` (HMAC with STRIPE_WEBHOOK_SECRET, 300 s tolerance); return the event."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        logger.error("[Billing] Error: STRIPE_WEBHOOK_SECRET is not set; refusing webhook")
        raise WebhookSignatureInvalid("Webhook signing is not configured.")
    try:
        text = payload.decode("utf-8")
        stripe.Webhook.construct_event(text, signature, secret, tolerance=stripe.Webhook.DEFAULT_TOLERANCE)
        event = json.loads(text)
    except (UnicodeDecodeError, ValueError, TypeError, stripe.SignatureVerificationError) as exc:
        # TypeError: the SDK's constant-time compare refuses a signature with non-ASCII characters.
        raise WebhookSignatureInvalid("The Stripe-Signature header does not verify this body.") from exc
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookSignatureInvalid("The signed body is not a Stripe event.")
    return event


def store_event(event: dict) -> StripeWebhookEvent:
    """Store a verified event once (unique Stripe event id); later deliveries find it. The same
    event delivered at once through two Galera nodes: one insert loses certification (1213) and
    is run again, finding the other's row."""
    stored, _ = ledger.run_with_retries(
        lambda: StripeWebhookEvent.objects.get_or_create(
            stripe_event_id=event["id"], defaults={"type": event["type"], "payload": event}
        )
    )
    return stored


def process_event(*, event_pk: int) -> WebhookOutcome:
    """Process a stored event exactly once. A processing error rolls everything back, marks
    the event `failed` with the error and re-raises (the webhook answers 500, or 503 when the
    database was busy or unreachable, so Stripe retries).
    Lock waits and deadlocks (also inside the ledger verbs it calls) are retried first, as the
    ledger retries its own (`ledger.run_with_retries`)."""
    try:
        outcome = ledger.run_with_retries(lambda: _process_once(event_pk))
    except Exception as exc:
        _record_failure(event_pk, exc)
        raise
    status = "duplicate" if outcome.duplicate else outcome.status
    metrics.WEBHOOK_EVENTS.labels(type=outcome.event_type, status=status).inc()
    return outcome


def _record_failure(event_pk: int, exc: Exception) -> None:
    event_type = StripeWebhookEvent.objects.filter(pk=event_pk).values_list("type", flat=True).first() or ""
    metrics.WEBHOOK_EVENTS.labels(type=event_type, status="error").inc()
    StripeWebhookEvent.objects.filter(pk=event_pk).exclude(status__in=DONE).update(
        status=WebhookEventStatus.FAILED, error=f"{exc.__class__.__name__}: {exc}"[:5000], attempts=F("attempts") + 1
    )


@transaction.atomic
def _process_once(event_pk: int) -> WebhookOutcome:
    stored = StripeWebhookEvent.objects.select_for_update().get(pk=event_pk)
    if stored.status in DONE:
        return WebhookOutcome(stored.stripe_event_id, stored.status, duplicate=True, event_type=stored.type)
    stored.attempts += 1
    handler = HANDLERS.get(stored.type)
    try:
        _refuse_other_mode(stored.payload)
        with transaction.atomic():
            stored.status = handler(stored) if handler else WebhookEventStatus.IGNORED
        stored.error = ""
        stored.processed_at = timezone.now()
    except EventRejected as exc:
        logger.warning("[Billing] Error: Webhook %s rejected: %s", stored.stripe_event_id, exc)
        stored.status = WebhookEventStatus.FAILED
        stored.error = str(exc)
    stored.save(update_fields=["status", "error", "attempts", "processed_at"])
    return WebhookOutcome(stored.stripe_event_id, stored.status, event_type=stored.type)


def _refuse_other_mode(event: dict) -> None:
    """A test-mode event never moves credits in live mode, nor a live one in test mode (a
    webhook endpoint or secret shared between modes by mistake)."""
    livemode = event.get("livemode")
    if livemode is not None and bool(livemode) != settings.STRIPE_LIVE_MODE:
        expected = "live" if settings.STRIPE_LIVE_MODE else "test"
        raise EventRejected(
            f"A {'live' if livemode else 'test'}-mode event, but this service runs in {expected} mode "
            "(STRIPE_API_KEY); nothing was granted."
        )


# --- checkout.session.* -----------------------------------------------------------------


def _object_id(value) -> str | None:
    """Stripe references are ids, or objects when expanded."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


def _lock_payment_intent(payment_intent_id: str | None) -> None:
    """Serialise all handlers of one payment intent (lock order: event, payment intent, purchase, wallet)."""
    if payment_intent_id:
        StripePaymentIntentLock.objects.get_or_create(payment_intent_id=payment_intent_id)
        StripePaymentIntentLock.objects.select_for_update().get(payment_intent_id=payment_intent_id)


def _purchase_for_session(session: dict) -> Purchase:
    """The locked purchase for a signed session, created for sessions we did not start
    (Payment Links, dashboard). Rejects sessions whose user, package or amount don't add up."""
    metadata = session.get("metadata") or {}
    raw_user_id, package_id = metadata.get("user_id"), metadata.get("package_id")
    if not raw_user_id or not package_id:
        raise EventRejected("The session has no metadata.user_id / metadata.package_id.")
    try:
        user_id = int(raw_user_id)
    except (TypeError, ValueError):
        raise EventRejected(f"metadata.user_id {raw_user_id!r} is not a user id.") from None
    reference = session.get("client_reference_id")
    if reference and reference != str(user_id):
        raise EventRejected(f"client_reference_id {reference!r} disagrees with metadata.user_id {user_id}.")
    if not User.objects.filter(pk=user_id).exists():
        raise EventRejected(f"No user {user_id}.")
    package = get_package(package_id)
    if package is None:
        raise EventRejected(f"No credit package {package_id!r}.")
    purchase, _ = Purchase.objects.get_or_create(
        stripe_checkout_session_id=session["id"],
        defaults={
            "user_id": user_id,
            "package_id": package.package_id,
            "credits": package.credits,
            "amount_cents": package.price_cents,
            "currency": package.currency,
            "credits_expire_in_days": package.expires_in_days,
            "created_by_checkout": False,
        },
    )
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    if (purchase.user_id, purchase.package_id) != (user_id, package_id):
        raise EventRejected("The session's user/package differ from the checkout we recorded.")
    paid = (session.get("amount_total"), (session.get("currency") or "").lower())
    if paid != (purchase.amount_cents, purchase.currency):
        raise EventRejected(
            f"Amount mismatch: the session is {paid[0]} {paid[1]}, package {purchase.package_id} "
            f"costs {purchase.amount_cents} {purchase.currency}."
        )
    return purchase


def _fulfil(stored: StripeWebhookEvent) -> str:
    session = stored.payload["data"]["object"]
    _lock_payment_intent(_object_id(session.get("payment_intent")))
    purchase = _purchase_for_session(session)
    if purchase.transaction_id is not None:
        return WebhookEventStatus.PROCESSED  # another event for this session already granted it
    grant_paid_purchase(
        purchase, payment_intent_id=_object_id(session.get("payment_intent")), stripe_event_id=stored.stripe_event_id
    )
    _apply_waiting_clawbacks(purchase)
    session_id = purchase.stripe_checkout_session_id
    transaction.on_commit(lambda: logger.info("[Billing] Webhook processed: %s", session_id))
    stripe_client.mirror_after_commit(session=session)
    return WebhookEventStatus.PROCESSED


def _on_session_completed(stored: StripeWebhookEvent) -> str:
    session = stored.payload["data"]["object"]
    if session.get("mode") != "payment":
        return WebhookEventStatus.IGNORED
    if session.get("payment_status") == "paid":
        return _fulfil(stored)
    purchase = _purchase_for_session(session)  # e.g. a bank debit still clearing
    if purchase.status == PurchaseStatus.PENDING:
        purchase.status = PurchaseStatus.AWAITING_PAYMENT
        purchase.save(update_fields=["status", "updated_at"])
    return WebhookEventStatus.PROCESSED


def _on_async_payment_failed(stored: StripeWebhookEvent) -> str:
    session = stored.payload["data"]["object"]
    purchase = _purchase_for_session(session)
    if purchase.status != PurchaseStatus.PAID:
        purchase.status = PurchaseStatus.FAILED
        purchase.failure_reason = "Asynchronous payment failed."
        purchase.save(update_fields=["status", "failure_reason", "updated_at"])
        logger.warning("[Billing] Error: Payment failed for checkout session %s", purchase.stripe_checkout_session_id)
        transaction.on_commit(metrics.FAILED_PAYMENTS.inc)
    return WebhookEventStatus.PROCESSED


# --- charge.refunded / charge.dispute.created ----------------------------------------------


def _claw_back_to_target(purchase: Purchase, stored: StripeWebhookEvent) -> None:
    """Take back the share of credits refunded or disputed so far, minus what was already taken.
    Cumulative, so replays and later events never take the same credits twice."""
    target = purchase.clawback_target_credits
    owed = target - purchase.clawed_back_credits
    if owed > 0:
        result = ledger.clawback(
            user_id=purchase.user_id,
            amount=owed,
            reason=f"{stored.type} for {purchase.package_id} ({purchase.stripe_payment_intent_id})",
            idempotency_key=f"stripe-clawback:{stored.stripe_event_id}",
            purchase_id=purchase.id,
            payment_intent_id=purchase.stripe_payment_intent_id,
            stripe_event_id=stored.stripe_event_id,
        )
        purchase.clawed_back_credits = target
        data = {
            "purchase_id": purchase.id,
            "user_id": purchase.user_id,
            "stripe_event_type": stored.type,
            "refunded_cents": purchase.refunded_cents,
            "disputed_cents": purchase.disputed_cents,
            "clawed_back_credits": result.clawed_back,
            "shortfall_credits": result.shortfall,
        }
        events.emit("purchase.refunded", data, user_id=purchase.user_id)
        if result.shortfall:
            events.emit("shortfall.opened", data, user_id=purchase.user_id)
    purchase.save(
        update_fields=["refunded_cents", "disputed_cents", "clawed_back_credits", "reversed_stripe_ids", "updated_at"]
    )


def _apply_clawback_event(purchase: Purchase, stored: StripeWebhookEvent) -> None:
    obj = stored.payload["data"]["object"]
    if stored.type == "charge.refunded":
        purchase.refunded_cents = max(purchase.refunded_cents, int(obj.get("amount_refunded") or 0))
    else:
        purchase.disputed_cents = max(purchase.disputed_cents, int(obj.get("amount") or 0))
    _claw_back_to_target(purchase, stored)


def _on_refund_or_dispute(stored: StripeWebhookEvent) -> str:
    payment_intent_id = _object_id(stored.payload["data"]["object"].get("payment_intent"))
    _lock_payment_intent(payment_intent_id)
    purchase = Purchase.objects.select_for_update().filter(stripe_payment_intent_id=payment_intent_id).first()
    if not payment_intent_id or purchase is None or purchase.status != PurchaseStatus.PAID:
        # Possibly delivered before its checkout.session.completed: kept as failed, and
        # applied automatically when that purchase is granted (see _apply_waiting_clawbacks).
        raise EventRejected(f"No paid purchase for payment intent {payment_intent_id!r} (yet).")
    _apply_clawback_event(purchase, stored)
    return WebhookEventStatus.PROCESSED


def _claw_back_or_restore(purchase: Purchase, stored: StripeWebhookEvent) -> None:
    """Move the purchase's clawed-back credits to the share refunded or disputed now: take more
    (`_claw_back_to_target`) or, after a failed refund or a won dispute, give back the excess."""
    target = purchase.clawback_target_credits
    excess = purchase.clawed_back_credits - target
    if excess <= 0:
        _claw_back_to_target(purchase, stored)
        return
    ledger.restore_clawback(
        user_id=purchase.user_id,
        amount=excess,
        reason=f"{stored.type} for {purchase.package_id} ({purchase.stripe_payment_intent_id})",
        purchase_id=purchase.id,
        idempotency_key=f"stripe-restore:{stored.stripe_event_id}",
        payment_intent_id=purchase.stripe_payment_intent_id,
        stripe_event_id=stored.stripe_event_id,
    )
    purchase.clawed_back_credits = target
    purchase.save(
        update_fields=["refunded_cents", "disputed_cents", "clawed_back_credits", "reversed_stripe_ids", "updated_at"]
    )


def _on_reversal(stored: StripeWebhookEvent) -> str:
    """A refund that failed (or was canceled) or a dispute the merchant won: the money stayed
    with us, so the credits clawed back for it are given back, once per refund or dispute."""
    obj = stored.payload["data"]["object"]
    if stored.type == "charge.dispute.closed" and obj.get("status") != "won":
        return WebhookEventStatus.IGNORED  # lost: the clawback at dispute creation stands
    if stored.type == "charge.refund.updated" and obj.get("status") not in ("failed", "canceled"):
        return WebhookEventStatus.IGNORED
    payment_intent_id = _object_id(obj.get("payment_intent"))
    _lock_payment_intent(payment_intent_id)
    purchase = Purchase.objects.select_for_update().filter(stripe_payment_intent_id=payment_intent_id).first()
    if purchase is None or purchase.status != PurchaseStatus.PAID:
        raise EventRejected(f"No paid purchase for payment intent {payment_intent_id!r}.")
    reversed_id = obj.get("id")
    if not reversed_id or reversed_id in purchase.reversed_stripe_ids:
        return WebhookEventStatus.PROCESSED  # this refund or dispute was already given back
    amount = int(obj.get("amount") or 0)
    if stored.type == "charge.dispute.closed":
        purchase.disputed_cents = max(0, purchase.disputed_cents - amount)
    else:
        purchase.refunded_cents = max(0, purchase.refunded_cents - amount)
    purchase.reversed_stripe_ids = [*purchase.reversed_stripe_ids, reversed_id]
    _claw_back_or_restore(purchase, stored)
    return WebhookEventStatus.PROCESSED


def _apply_waiting_clawbacks(purchase: Purchase) -> None:
    """Refunds/disputes that arrived before the purchase was granted are applied right after it."""
    if not purchase.stripe_payment_intent_id:
        return
    waiting = StripeWebhookEvent.objects.select_for_update().filter(
        status=WebhookEventStatus.FAILED,
        type__in=CLAWBACK_TYPES,
        payload__data__object__payment_intent=purchase.stripe_payment_intent_id,
    )
    for stored in waiting.order_by("id"):
        _apply_clawback_event(purchase, stored)
        stored.status = WebhookEventStatus.PROCESSED
        stored.error = ""
        stored.processed_at = timezone.now()
        stored.save(update_fields=["status", "error", "processed_at"])


# --- saved cards and auto-recharge (billing.auto_recharge) ---------------------------------


def _on_setup_succeeded(stored: StripeWebhookEvent) -> str:
    """A card saved through Checkout in setup mode: stored for auto-recharge (newest event wins)."""
    intent = stored.payload["data"]["object"]
    metadata = intent.get("metadata") or {}
    if metadata.get("purpose") != stripe_client.CARD_SETUP_PURPOSE:
        return WebhookEventStatus.IGNORED
    try:
        user_id = int(metadata.get("user_id"))
    except (TypeError, ValueError):
        raise EventRejected(f"metadata.user_id {metadata.get('user_id')!r} is not a user id.") from None
    customer_id, payment_method_id = _object_id(intent.get("customer")), _object_id(intent.get("payment_method"))
    user = User.objects.filter(pk=user_id).first()
    if user is None or not customer_id or user.stripe_customer_id != customer_id:
        raise EventRejected(f"The SetupIntent's customer {customer_id!r} is not user {user_id}'s.")
    if not payment_method_id:
        raise EventRejected("The SetupIntent has no payment method.")
    created = stored.payload.get("created")
    confirmed_at = datetime.fromtimestamp(int(created), tz=UTC) if created else timezone.now()
    auto_recharge.save_card(
        user_id=user_id, customer_id=customer_id, payment_method_id=payment_method_id, confirmed_at=confirmed_at
    )
    return WebhookEventStatus.PROCESSED


def _on_payment_intent_succeeded(stored: StripeWebhookEvent) -> str:
    intent = stored.payload["data"]["object"]
    _lock_payment_intent(intent.get("id"))
    try:
        purchase = auto_recharge.on_payment_succeeded(intent=intent, stripe_event_id=stored.stripe_event_id)
    except auto_recharge.RechargeMismatch as exc:
        raise EventRejected(str(exc)) from None
    if purchase is None:
        return WebhookEventStatus.IGNORED
    _apply_waiting_clawbacks(purchase)  # a refund or dispute that arrived before the grant
    return WebhookEventStatus.PROCESSED


def _on_payment_intent_failed(stored: StripeWebhookEvent) -> str:
    intent = stored.payload["data"]["object"]
    _lock_payment_intent(intent.get("id"))
    return (
        WebhookEventStatus.PROCESSED if auto_recharge.on_payment_failed(intent=intent) else WebhookEventStatus.IGNORED
    )


HANDLERS: dict[str, Callable[[StripeWebhookEvent], str]] = {
    "setup_intent.succeeded": _on_setup_succeeded,
    "payment_intent.succeeded": _on_payment_intent_succeeded,
    "payment_intent.payment_failed": _on_payment_intent_failed,
    "checkout.session.completed": _on_session_completed,
    "checkout.session.async_payment_succeeded": _fulfil,
    "checkout.session.async_payment_failed": _on_async_payment_failed,
    "charge.refunded": _on_refund_or_dispute,
    "charge.dispute.created": _on_refund_or_dispute,
    "charge.dispute.closed": _on_reversal,
    "charge.refund.updated": _on_reversal,
}
