"""Saved cards and auto-recharge: never run dry, never pay twice.

**Saved card.** `start_card_setup` opens a Checkout Session in `setup` mode; Stripe's signed
`setup_intent.succeeded` event stores the card (`save_card`), newest event wins. `remove_card`
detaches it at Stripe and turns auto-recharge off.

**Auto-recharge.** `configure` stores `{enabled, threshold_credits, package_id,
monthly_limit_cents}` and sets the wallet's recharge threshold. The ledger itself records an
attempt (`RechargeAttempt`) when a debit leaves the available credits below it — exactly once
per crossing, never while another attempt is in flight (`billing.ledger.thresholds`). Then:

1. `start(attempt_id)` (a Celery task, queued after the debit commits; `retry_stalled` picks
   up what a lost task left) claims the attempt, checks the monthly limit (attempts in flight
   and succeeded both count), and asks Stripe for an off-session PaymentIntent for the
   package's price, with the attempt's own idempotency key: asking again after a lost answer
   never charges twice, and a failed attempt never blocks the next one.
2. Credits come only from the signed `payment_intent.succeeded` event (`on_payment_succeeded`),
   once per attempt, as a paid purchase lot; the charged and the credited amounts are both
   recorded. Duplicates, reordering and concurrent deliveries are serialised on the attempt row.
3. A decline, `requires_action` or `payment_intent.payment_failed` fails the attempt
   (`auto_recharge.failed`, an e-mail); after 3 failures in a row auto-recharge turns itself
   off (`auto_recharge.disabled`, an e-mail). A later crossing may try again.

Lock order: payment intent → wallet → attempt → auto-recharge settings. The wallet comes first
because a debit reads the attempts and the settings while it holds the wallet's lock (to decide a
crossing); anything here that writes them takes the wallet's lock first (`ledger.lock_wallet`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import current_app as celery_app
from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.dispatch import receiver
from django.utils import timezone

from billing import events, ledger, stripe_client
from billing.ledger.limits import set_thresholds
from billing.models import (
    IN_FLIGHT,
    AutoRecharge,
    Purchase,
    RechargeAttempt,
    RechargeStatus,
    SavedPaymentMethod,
)
from billing.packages import all_packages, get_package
from billing.signals import recharge_started
from billing.stripe_checkout import ensure_stripe_customer, grant_paid_purchase, key_digest
from core.errors import DomainError
from users.models import User

logger = logging.getLogger("billing")

FAILURES_BEFORE_DISABLING = 3


def _retry_lease() -> timedelta:  # a setting, read when used (tests change it)
    return timedelta(seconds=settings.AUTO_RECHARGE_RETRY_SECONDS)


def card_of(user_id: int) -> SavedPaymentMethod | None:
    """The user's saved card, unless they removed it."""
    return SavedPaymentMethod.objects.filter(user_id=user_id, removed_at__isnull=True).first()


class RechargeMismatch(Exception):
    """A signed payment that does not match its attempt (amount, currency, customer): never granted."""


class PaymentMethodRequired(DomainError):
    error_code = "PAYMENT_METHOD_REQUIRED"


class PaymentMethodNotFound(DomainError):
    error_code = "PAYMENT_METHOD_NOT_FOUND"


# --- saved card -------------------------------------------------------------------------


def start_card_setup(*, user: User, idempotency_key: str | None = None) -> Any:
    """A Checkout Session in setup mode for `user` to save a card; nothing is stored until
    Stripe's signed `setup_intent.succeeded`."""
    customer_id = ensure_stripe_customer(user=user)
    return stripe_client.create_setup_session(
        user_id=user.id,
        customer_id=customer_id,
        currency=all_packages()[0].currency,
        # Stripe keys are at most 255 characters: a client's key goes in as its digest.
        idempotency_key=f"card-setup-{user.id}-{key_digest(idempotency_key) or uuid.uuid4().hex}",
    )


def save_card(*, user_id: int, customer_id: str, payment_method_id: str, confirmed_at: datetime) -> bool:
    """Store the card a signed SetupIntent confirmed, unless a newer change was already stored
    (events may arrive out of order); True when stored."""
    ledger.lock_wallet(user_id)  # one writer per user's card (the lock order's first row)
    current = SavedPaymentMethod.objects.filter(user_id=user_id).first()
    if current is not None and max(current.saved_at, current.removed_at or current.saved_at) > confirmed_at:
        return False  # an older event than the card saved or removed since
    SavedPaymentMethod.objects.update_or_create(
        user_id=user_id,
        defaults={
            "stripe_payment_method_id": payment_method_id,
            "stripe_customer_id": customer_id,
            "saved_at": confirmed_at,
            "removed_at": None,
            **({"brand": "", "last4": ""} if current and current.stripe_payment_method_id != payment_method_id else {}),
        },
    )
    stripe_client.mirror_after_commit(payment_method=payment_method_id)
    return True


def remove_card(*, user_id: int) -> None:
    """Detach the saved card at Stripe, forget it and turn auto-recharge off (it needs a card).
    A card Stripe no longer knows is forgotten all the same."""
    card = card_of(user_id)
    if card is None:
        raise PaymentMethodNotFound("No card is saved.")
    stripe_client.detach_payment_method(card.stripe_payment_method_id)
    with transaction.atomic():
        ledger.lock_wallet(user_id)
        # Only the card detached above (a card saved meanwhile stays); kept as removed, so a late
        # setup event older than the removal cannot bring it back.
        SavedPaymentMethod.objects.filter(
            pk=card.pk, stripe_payment_method_id=card.stripe_payment_method_id, removed_at__isnull=True
        ).update(removed_at=timezone.now())
        settings_row = AutoRecharge.objects.select_for_update().filter(user_id=user_id, enabled=True).first()
        if settings_row is not None:
            _disable(settings_row, "The saved card was removed.")


# --- settings ---------------------------------------------------------------------------


def configure(
    *, user_id: int, enabled: bool, threshold_credits: int, package_id: str, monthly_limit_cents: int
) -> AutoRecharge:
    """Store the user's auto-recharge settings. Enabling needs a saved card and a package whose
    price fits the monthly limit (checked by the API); it clears past failures and arms the
    threshold — a wallet already below it recharges now."""
    if enabled and card_of(user_id) is None:
        raise PaymentMethodRequired("Save a card first (POST /billing/payment-method/setup).")
    with transaction.atomic():
        ledger.lock_wallet(user_id)
        row, _ = AutoRecharge.objects.get_or_create(user_id=user_id)
        row = AutoRecharge.objects.select_for_update().get(pk=row.pk)
        row.enabled, row.threshold_credits = enabled, threshold_credits
        row.package_id, row.monthly_limit_cents = package_id, monthly_limit_cents
        if enabled:
            row.failures_in_row, row.disabled_reason = 0, ""
        row.save()
        set_thresholds(user_id=user_id, recharge_threshold_credits=threshold_credits if enabled else None)
    return row


def month_spent_cents(user_id: int, now: datetime | None = None) -> int:
    """What this calendar month's (UTC) attempts in flight or succeeded ask of the card."""
    now = now or timezone.now()
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (
        RechargeAttempt.objects.filter(
            user_id=user_id,
            created_at__gte=start,
            status__in=[*IN_FLIGHT, RechargeStatus.SUCCEEDED],
            amount_cents__isnull=False,
        ).aggregate(total=Sum("amount_cents"))["total"]
        or 0
    )


# --- attempts ---------------------------------------------------------------------------


@receiver(recharge_started)
def _queue_start(sender, attempt_id: int, **kwargs) -> None:
    try:
        celery_app.tasks["billing.start_auto_recharge"].delay(attempt_id)
    except Exception:  # the broker is down: `retry_stalled` starts it
        logger.exception("Could not queue auto-recharge attempt %s; the sweep will start it", attempt_id)


def start(attempt_id: int) -> str:
    """Ask Stripe for an attempt's payment; its status afterwards. Safe to call again (a lost
    task, a retry): a claimed attempt is asked again with the same idempotency key."""
    claim = _claim(attempt_id)
    if claim is None:
        return RechargeAttempt.objects.get(pk=attempt_id).status
    attempt, card = claim
    payment = stripe_client.charge_saved_card(
        customer_id=card.stripe_customer_id,
        payment_method_id=card.stripe_payment_method_id,
        amount_cents=attempt.amount_cents,
        currency=attempt.currency,
        metadata={
            "user_id": str(attempt.user_id),
            "package_id": attempt.package_id,
            "auto_recharge_attempt_id": str(attempt.pk),
        },
        idempotency_key=f"auto-recharge-{attempt.pk}",
    )
    if payment.status in ("succeeded", "processing"):
        # Credits come from the signed payment_intent.succeeded event alone.
        RechargeAttempt.objects.filter(pk=attempt.pk, stripe_payment_intent_id__isnull=True).update(
            stripe_payment_intent_id=payment.payment_intent_id
        )
    else:
        fail(
            attempt_id=attempt.pk,
            code=payment.failure_code or payment.status,
            reason=payment.message or f"The payment needs attention ({payment.status}).",
            payment_intent_id=payment.payment_intent_id,
        )
    return RechargeAttempt.objects.get(pk=attempt.pk).status


@transaction.atomic
def _claim(attempt_id: int) -> tuple[RechargeAttempt, SavedPaymentMethod] | None:
    """Price a pending attempt and mark it processing — or skip it (auto-recharge off, no card,
    monthly limit) — or, for one already processing (a retry), return it as it was priced."""
    ledger.lock_wallet(_user_of(attempt_id))
    attempt = RechargeAttempt.objects.select_for_update().get(pk=attempt_id)
    card = card_of(attempt.user_id)
    now = timezone.now()
    if attempt.status == RechargeStatus.PROCESSING:
        # Asked before and not answered: ask again (same key) only once the asker's lease is
        # over, so two askers never overlap; never after 23 h (Stripe forgets keys after 24).
        if attempt.stripe_payment_intent_id or attempt.started_at > now - _retry_lease():
            return None
        if card is None or now - attempt.created_at > timedelta(hours=23):
            fail(
                attempt_id=attempt.pk,
                code="no_card" if card is None else "no_answer",
                reason="The card was removed." if card is None else "Stripe never answered; not asked again.",
            )
            return None
        attempt.started_at = now
        attempt.save(update_fields=["started_at"])
        return attempt, card
    if attempt.status != RechargeStatus.PENDING:
        return None
    config = AutoRecharge.objects.select_for_update().get(user_id=attempt.user_id)
    package = get_package(attempt.package_id)
    skip = None
    if not config.enabled:
        skip = "Auto-recharge was turned off."
    elif card is None:
        skip = "No card is saved."
    elif package is None:
        skip = f"The package {attempt.package_id!r} is no longer sold."
    elif month_spent_cents(attempt.user_id) + package.price_cents > config.monthly_limit_cents:
        skip = f"This month's auto-recharges would pass the limit of {config.monthly_limit_cents} cents."
    if skip:
        attempt.status, attempt.failure_reason, attempt.finished_at = RechargeStatus.SKIPPED, skip, now
        attempt.save(update_fields=["status", "failure_reason", "finished_at"])
        logger.warning("[Billing] Auto-recharge %s for user %s skipped: %s", attempt.pk, attempt.user_id, skip)
        return None
    attempt.status, attempt.started_at = RechargeStatus.PROCESSING, now
    attempt.credits, attempt.amount_cents, attempt.currency = package.credits, package.price_cents, package.currency
    attempt.save(update_fields=["status", "started_at", "credits", "amount_cents", "currency"])
    return attempt, card


@transaction.atomic
def fail(*, attempt_id: int, code: str, reason: str, payment_intent_id: str | None = None) -> bool:
    """Record a failed attempt (once; never one that succeeded): `auto_recharge.failed`, and
    after `FAILURES_BEFORE_DISABLING` in a row, auto-recharge off (`auto_recharge.disabled`)."""
    user_id = _user_of(attempt_id)
    if user_id is None:
        return False  # not one of ours (a forged or foreign attempt id in metadata)
    ledger.lock_wallet(user_id)
    attempt = RechargeAttempt.objects.select_for_update().get(pk=attempt_id)
    if attempt.status != RechargeStatus.PROCESSING:
        return False
    attempt.status, attempt.finished_at = RechargeStatus.FAILED, timezone.now()
    attempt.failure_code, attempt.failure_reason = code[:64], reason[:500]
    attempt.stripe_payment_intent_id = attempt.stripe_payment_intent_id or payment_intent_id
    attempt.save(update_fields=["status", "finished_at", "failure_code", "failure_reason", "stripe_payment_intent_id"])
    config = AutoRecharge.objects.select_for_update().get(user_id=attempt.user_id)
    config.failures_in_row += 1
    config.save(update_fields=["failures_in_row", "updated_at"])
    logger.warning("[Billing] Error: Auto-recharge %s for user %s failed: %s", attempt.pk, attempt.user_id, code)
    events.emit(
        "auto_recharge.failed",
        {**_attempt_data(attempt), "failures_in_row": config.failures_in_row},
        user_id=attempt.user_id,
    )
    if config.enabled and config.failures_in_row >= FAILURES_BEFORE_DISABLING:
        _disable(config, f"{config.failures_in_row} auto-recharges failed in a row (the last: {reason[:200]})")
    return True


def _disable(config: AutoRecharge, reason: str) -> None:
    config.enabled, config.disabled_reason = False, reason[:500]
    config.save(update_fields=["enabled", "disabled_reason", "updated_at"])
    set_thresholds(user_id=config.user_id, recharge_threshold_credits=None)
    logger.warning("[Billing] Auto-recharge for user %s turned off: %s", config.user_id, reason)
    events.emit(
        "auto_recharge.disabled", {"user_id": config.user_id, "reason": config.disabled_reason}, user_id=config.user_id
    )


def _attempt_data(attempt: RechargeAttempt) -> dict[str, Any]:
    return {
        "attempt_id": attempt.pk,
        "user_id": attempt.user_id,
        "package_id": attempt.package_id,
        "status": attempt.status,
        "amount_cents": attempt.amount_cents,
        "charged_cents": attempt.charged_cents,
        "credits": attempt.credits,
        "credited_credits": attempt.credited_credits,
        "currency": attempt.currency,
        "payment_intent_id": attempt.stripe_payment_intent_id,
        "failure_code": attempt.failure_code,
        "failure_reason": attempt.failure_reason,
    }


def on_payment_succeeded(*, intent: dict, stripe_event_id: str) -> Purchase | None:
    """Grant a succeeded auto-recharge payment, once: a paid purchase lot of the attempt's
    credits; the purchase. None for a PaymentIntent that is not an auto-recharge (Checkout's)."""
    attempt_id = _attempt_id(intent)
    if attempt_id is None:
        return None
    user_id = _user_of(attempt_id)
    if user_id is None:
        raise RechargeMismatch(f"No auto-recharge attempt {attempt_id}.")
    ledger.lock_wallet(user_id)
    attempt = RechargeAttempt.objects.select_for_update().get(pk=attempt_id)
    if attempt.stripe_payment_intent_id and attempt.stripe_payment_intent_id != intent["id"]:
        raise RechargeMismatch(
            f"A second payment {intent['id']} for auto-recharge {attempt.pk} (paid by "
            f"{attempt.stripe_payment_intent_id}): not granted; refund it."
        )
    if attempt.status == RechargeStatus.SUCCEEDED:
        return attempt.purchase  # a duplicate delivery: granted already
    paid = (intent.get("amount_received") or intent.get("amount"), (intent.get("currency") or "").lower())
    if attempt.amount_cents is None or paid != (attempt.amount_cents, attempt.currency):
        raise RechargeMismatch(
            f"Amount mismatch: the payment is {paid[0]} {paid[1]}, attempt {attempt.pk} asked "
            f"{attempt.amount_cents} {attempt.currency}."
        )
    # A card is saved only for its user's own customer (`_on_setup_succeeded`), so it is that one.
    customer_id = User.objects.get(pk=attempt.user_id).stripe_customer_id
    if not customer_id or intent.get("customer") != customer_id:
        raise RechargeMismatch(f"The payment's customer is not user {attempt.user_id}'s.")
    package = get_package(attempt.package_id)
    purchase, _ = Purchase.objects.get_or_create(
        stripe_checkout_session_id=f"auto-recharge-{attempt.pk}",
        defaults={
            "user_id": attempt.user_id,
            "package_id": attempt.package_id,
            "credits": attempt.credits,
            "amount_cents": attempt.amount_cents,
            "currency": attempt.currency,
            "credits_expire_in_days": package.expires_in_days if package else None,
            "created_by_checkout": False,
        },
    )
    result = grant_paid_purchase(purchase, payment_intent_id=intent["id"], stripe_event_id=stripe_event_id)
    attempt.status, attempt.finished_at, attempt.purchase = RechargeStatus.SUCCEEDED, purchase.paid_at, purchase
    attempt.charged_cents, attempt.credited_credits = paid[0], result.transaction.amount
    attempt.stripe_payment_intent_id = intent["id"]
    attempt.failure_code = attempt.failure_reason = ""
    attempt.save()
    AutoRecharge.objects.filter(user_id=attempt.user_id).update(failures_in_row=0, updated_at=purchase.paid_at)
    data = {**_attempt_data(attempt), "balance_after": result.balance_after}
    events.emit("auto_recharge.succeeded", data, user_id=attempt.user_id)
    logger.info(
        "[Billing] Auto-recharge %s granted %s credits to user %s", attempt.pk, attempt.credits, attempt.user_id
    )
    return purchase


def on_payment_failed(*, intent: dict) -> bool:
    """A signed `payment_intent.payment_failed` for an auto-recharge fails its attempt (unless it
    already failed or succeeded); False for other PaymentIntents."""
    attempt_id = _attempt_id(intent)
    if attempt_id is None:
        return False
    error = intent.get("last_payment_error") or {}
    fail(
        attempt_id=attempt_id,
        code=str(error.get("code") or error.get("decline_code") or "payment_failed"),
        reason=str(error.get("message") or "The payment failed."),
        payment_intent_id=intent.get("id"),
    )
    return True


def _user_of(attempt_id: int) -> int | None:
    return RechargeAttempt.objects.filter(pk=attempt_id).values_list("user_id", flat=True).first()


def _attempt_id(intent: dict) -> int | None:
    raw = (intent.get("metadata") or {}).get("auto_recharge_attempt_id")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def retry_stalled() -> int:
    """Start attempts a lost task left behind: pending ones, and processing ones Stripe has not
    answered for AUTO_RECHARGE_RETRY_SECONDS (asked again with the same idempotency key)."""
    now = timezone.now()
    stalled = list(
        RechargeAttempt.objects.filter(
            Q(status=RechargeStatus.PENDING, created_at__lt=now - timedelta(seconds=30))
            | Q(
                status=RechargeStatus.PROCESSING,
                stripe_payment_intent_id__isnull=True,
                started_at__lt=now - _retry_lease(),
            )
        )
        .order_by("id")
        .values_list("pk", flat=True)
    )
    started = 0
    for attempt_id in stalled:
        try:
            start(attempt_id)
            started += 1
        except stripe_client.StripeUnavailable:
            logger.warning("Stripe unavailable; auto-recharge %s stays for the next sweep", attempt_id)
    return started
