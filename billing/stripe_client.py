"""Every outbound call to Stripe's API lives here (customers, checkout, catalogue, mirror).

Money never waits on these calls: webhooks grant credits from the signed payload alone,
and the dj-stripe mirror is refreshed after the grant has committed, best effort.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import stripe
from celery import current_app as celery_app
from django.conf import settings
from django.db import transaction
from djstripe import models as djstripe_models

from billing.models import SavedPaymentMethod
from billing.packages import CreditPackage
from core.errors import DomainError

logger = logging.getLogger("billing")


class StripeUnavailable(DomainError):
    """Stripe could not be reached or is failing; the caller may retry."""

    error_code = "STRIPE_UNAVAILABLE"

    def __init__(self, detail: str = "Payments are temporarily unavailable; please retry shortly."):
        super().__init__(detail)


class StripeRejected(DomainError):
    """Stripe refused the request (its message says why); retrying the same request will not help."""

    error_code = "STRIPE_ERROR"


def _api_base() -> str | None:
    return getattr(settings, "STRIPE_API_HOST", None) or None


def client() -> stripe.StripeClient:
    if not settings.STRIPE_API_KEY:
        raise StripeUnavailable("Stripe is not configured (STRIPE_API_KEY is empty).")
    base = _api_base()
    return stripe.StripeClient(
        settings.STRIPE_API_KEY,
        stripe_version=settings.STRIPE_API_VERSION,
        base_addresses={"api": base} if base else None,
        # Safe: every POST below carries an idempotency key.
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
    )


def _call(fn, *args, missing_ok: bool = False, **kwargs):
    """Run one Stripe call, turning SDK errors into our own (unavailable / rejected); with
    `missing_ok`, an object Stripe does not know is None."""
    try:
        return fn(*args, **kwargs)
    except stripe.InvalidRequestError as exc:
        if missing_ok and exc.code == "resource_missing":
            return None
        logger.error("[Billing] Error: Stripe refused a request: %s", exc.user_message)
        raise StripeRejected(exc.user_message or "Stripe refused the request.") from exc
    except stripe.APIConnectionError as exc:
        logger.error("[Billing] Error: Stripe unreachable: %s", exc.user_message or exc.__class__.__name__)
        raise StripeUnavailable() from exc
    except stripe.RateLimitError as exc:
        raise StripeUnavailable() from exc
    except stripe.StripeError as exc:
        if exc.http_status and exc.http_status >= 500:
            raise StripeUnavailable() from exc
        logger.error("[Billing] Error: Stripe refused a request: %s", exc.user_message)
        raise StripeRejected(exc.user_message or "Stripe refused the request.") from exc


def create_customer(*, user_id: int, email: str) -> stripe.Customer:
    return _call(
        client().v1.customers.create,
        # djstripe_subscriber links the dj-stripe mirror Customer to our user.
        params={"email": email, "metadata": {"user_id": str(user_id), "djstripe_subscriber": str(user_id)}},
        options={"idempotency_key": f"customer-for-user-{user_id}"},
    )


def create_checkout_session(
    *,
    user_id: int,
    customer_id: str,
    package: CreditPackage,
    idempotency_key: str,
) -> stripe.checkout.Session:
    metadata = {"user_id": str(user_id), "package_id": package.package_id}
    if package.stripe_price_id:
        line_item: dict[str, Any] = {"price": package.stripe_price_id, "quantity": 1}
    else:
        line_item = {
            "price_data": {
                "currency": package.currency,
                "unit_amount": package.price_cents,
                "product_data": {"name": package.name, "metadata": {"package_id": package.package_id}},
            },
            "quantity": 1,
        }
    frontend = settings.FRONTEND_URL.rstrip("/")
    return _call(
        client().v1.checkout.sessions.create,
        params={
            "mode": "payment",
            "customer": customer_id,
            "client_reference_id": str(user_id),
            "line_items": [line_item],
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": f"{frontend}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
            "cancel_url": f"{frontend}/billing/cancel?session_id={{CHECKOUT_SESSION_ID}}",
        },
        options={"idempotency_key": idempotency_key},
    )


# The metadata `purpose` of a card-saving Checkout, by which its SetupIntent's event is recognised.
CARD_SETUP_PURPOSE = "auto_recharge_card"


def create_setup_session(
    *, user_id: int, customer_id: str, currency: str, idempotency_key: str
) -> stripe.checkout.Session:
    """A Checkout Session in `setup` mode: the user saves a card for off-session auto-recharges."""
    metadata = {"user_id": str(user_id), "purpose": CARD_SETUP_PURPOSE}
    frontend = settings.FRONTEND_URL.rstrip("/")
    return _call(
        client().v1.checkout.sessions.create,
        params={
            "mode": "setup",
            "currency": currency,
            "customer": customer_id,
            "client_reference_id": str(user_id),
            "metadata": metadata,
            "setup_intent_data": {"metadata": metadata},
            "success_url": f"{frontend}/billing/card-saved?session_id={{CHECKOUT_SESSION_ID}}",
            "cancel_url": f"{frontend}/billing/card-cancelled?session_id={{CHECKOUT_SESSION_ID}}",
        },
        options={"idempotency_key": idempotency_key},
    )


def detach_payment_method(payment_method_id: str) -> None:
    """Detach a saved card from its customer; one Stripe no longer knows counts as detached."""
    _call(client().v1.payment_methods.detach, payment_method_id, missing_ok=True)


@dataclass(frozen=True)
class RechargePayment:
    """What Stripe answered to an off-session payment: `succeeded`, `processing`,
    `requires_action` (the bank wants the customer present) or `failed` (declined)."""

    status: str
    payment_intent_id: str | None
    failure_code: str = ""
    message: str = ""


def charge_saved_card(
    *, customer_id: str, payment_method_id: str, amount_cents: int, currency: str, metadata: dict, idempotency_key: str
) -> RechargePayment:
    """An off-session PaymentIntent, confirmed at once, for an auto-recharge. The idempotency key
    is the attempt's own: asking again after a lost answer never charges twice, and a new attempt
    (a new key) is never blocked by a failed one. Raises `StripeUnavailable` when Stripe did not
    answer (ask again later with the same key)."""
    try:
        intent = client().v1.payment_intents.create(
            params={
                "amount": amount_cents,
                "currency": currency,
                "customer": customer_id,
                "payment_method": payment_method_id,
                "off_session": True,
                "confirm": True,
                "metadata": metadata,
                "description": "Credits auto-recharge",
            },
            options={"idempotency_key": idempotency_key},
        )
    except stripe.CardError as exc:
        intent = getattr(exc.error, "payment_intent", None) if exc.error else None
        intent_id = intent.get("id") if intent else None
        code = (exc.code or "card_declined")[:64]
        status = "requires_action" if code == "authentication_required" else "failed"
        return RechargePayment(status, intent_id, code, exc.user_message or "The card was declined.")
    except stripe.StripeError as exc:
        unknown = isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError | stripe.IdempotencyError)
        if unknown or exc.http_status == 409 or (exc.http_status or 500) >= 500:
            # No answer, or the same key still in use elsewhere: the outcome is unknown, not a decline.
            raise StripeUnavailable() from exc
        return RechargePayment("failed", None, (exc.code or "stripe_error")[:64], exc.user_message or str(exc))
    return RechargePayment(intent.status, intent.id)


# --- Catalogue (stripe_sync_packages) ---------------------------------------------------


def product_id_for(package: CreditPackage) -> str:
    return f"credits_{package.package_id}"


def _retrieve_or_none(retrieve, object_id: str):
    """The Stripe object, or None if Stripe says it does not exist."""
    try:
        return retrieve(object_id)
    except stripe.InvalidRequestError as exc:
        if exc.code == "resource_missing":
            return None
        raise
    except stripe.APIConnectionError as exc:
        raise StripeUnavailable() from exc


def retrieve_product(product_id: str) -> stripe.Product | None:
    return _retrieve_or_none(client().v1.products.retrieve, product_id)


def upsert_product(package: CreditPackage, *, existing: stripe.Product | None) -> stripe.Product:
    params = {"name": package.name, "metadata": {"package_id": package.package_id}}
    if existing is None:
        # Header values must be ASCII; package names need not be.
        name_digest = hashlib.sha256(package.name.encode()).hexdigest()[:16]
        return _call(
            client().v1.products.create,
            params={"id": product_id_for(package), **params},
            options={"idempotency_key": f"product-{package.package_id}-{name_digest}"},
        )
    return _call(client().v1.products.update, existing.id, params=params)


def retrieve_price(price_id: str) -> stripe.Price | None:
    return _retrieve_or_none(client().v1.prices.retrieve, price_id)


def create_price(package: CreditPackage) -> stripe.Price:
    return _call(
        client().v1.prices.create,
        params={
            "product": product_id_for(package),
            "currency": package.currency,
            "unit_amount": package.price_cents,
            "lookup_key": package.package_id,
            "transfer_lookup_key": True,
            "metadata": {"package_id": package.package_id, "credits": str(package.credits)},
        },
        options={"idempotency_key": f"price-{package.package_id}-{package.price_cents}-{package.currency}"},
    )


def archive_price(price_id: str) -> None:
    _call(client().v1.prices.update, price_id, params={"active": False})


# --- dj-stripe mirror -------------------------------------------------------------------


def mirror_after_commit(
    *, customer: dict | None = None, session: dict | None = None, payment_method: str | None = None
) -> None:
    """Refresh the mirror once the current transaction commits — on a Celery worker when a broker
    is configured, so a slow Stripe API never delays a webhook's answer; inline when there is no
    broker, or when the broker refuses the task (logged)."""

    def enqueue() -> None:
        try:
            # Found by name: `billing.tasks` imports this module.
            celery_app.tasks["billing.mirror_stripe_objects"].delay(
                customer=customer, session=session, payment_method=payment_method
            )
        except Exception:
            logger.warning("Could not queue the dj-stripe mirror refresh; refreshing it now", exc_info=True)
            mirror_objects(customer=customer, session=session, payment_method=payment_method)

    transaction.on_commit(enqueue)


def mirror_objects(
    *, customer: dict | None = None, session: dict | None = None, payment_method: str | None = None
) -> None:
    """Refresh dj-stripe's Customer / Checkout Session / PaymentMethod rows for the admin; for a
    newly saved card, make it the customer's default and note its brand and last 4 digits.

    Best effort and after the fact: it may call Stripe's API, and a failure is logged, never
    raised, because the money has already moved (or not) on the strength of the signed event.
    """
    base = _api_base()
    if base:
        stripe.api_base = base
    try:
        if customer is not None:
            djstripe_models.Customer.sync_from_stripe_data(customer, api_key=settings.STRIPE_API_KEY)
        if session is not None:
            djstripe_models.Session.sync_from_stripe_data(session, api_key=settings.STRIPE_API_KEY)
        if payment_method is not None:
            _mirror_payment_method(payment_method)
    except Exception:
        logger.warning("Could not refresh the dj-stripe mirror", exc_info=True)


def _mirror_payment_method(payment_method_id: str) -> None:
    found = _call(client().v1.payment_methods.retrieve, payment_method_id, missing_ok=True)
    if found is None:
        return
    card = found.get("card") or {}
    SavedPaymentMethod.objects.filter(stripe_payment_method_id=payment_method_id).update(
        brand=(card.get("brand") or "")[:32], last4=(card.get("last4") or "")[:4]
    )
    if found.get("customer"):
        _call(
            client().v1.customers.update,
            found["customer"],
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
        )
    djstripe_models.PaymentMethod.sync_from_stripe_data(found.to_dict(), api_key=settings.STRIPE_API_KEY)
