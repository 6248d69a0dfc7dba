"""Every outbound call to Stripe's API lives here (customers, checkout, catalogue, mirror).

Money never waits on these calls: webhooks grant credits from the signed payload alone,
and the dj-stripe mirror is refreshed after the grant has committed, best effort.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import stripe
from celery import current_app as celery_app
from django.conf import settings
from django.db import transaction
from djstripe import models as djstripe_models

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


def _call(fn, *args, **kwargs):
    """Run one Stripe call, turning SDK errors into our own (unavailable / rejected)."""
    try:
        return fn(*args, **kwargs)
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


def mirror_after_commit(*, customer: dict | None = None, session: dict | None = None) -> None:
    """Refresh the mirror once the current transaction commits — on a Celery worker when a broker
    is configured, so a slow Stripe API never delays a webhook's answer; inline when there is no
    broker, or when the broker refuses the task (logged)."""

    def enqueue() -> None:
        try:
            # Found by name: `billing.tasks` imports this module.
            celery_app.tasks["billing.mirror_stripe_objects"].delay(customer=customer, session=session)
        except Exception:
            logger.warning("Could not queue the dj-stripe mirror refresh; refreshing it now", exc_info=True)
            mirror_objects(customer=customer, session=session)

    transaction.on_commit(enqueue)


def mirror_objects(*, customer: dict | None = None, session: dict | None = None) -> None:
    """Refresh dj-stripe's Customer / Checkout Session / PaymentIntent rows for the admin.

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
    except Exception:
        logger.warning("Could not refresh the dj-stripe mirror", exc_info=True)
