"""Build realistic Stripe events from recorded shapes and sign them with the SDK's helper."""

import copy
import json
import time
from pathlib import Path

import stripe
from django.conf import settings

PAYLOADS = Path(__file__).parent / "stripe_payloads"


def _load(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def checkout_event(
    *,
    event_id: str,
    session_id: str,
    user_id,
    package_id: str = "pack_1k",
    amount_total: int = 1000,
    currency: str = "usd",
    payment_intent: str | None = "pi_test_1",
    payment_status: str = "paid",
    event_type: str = "checkout.session.completed",
    client_reference_id="same",
) -> dict:
    event = _load("checkout.session.completed")
    event["id"], event["type"] = event_id, event_type
    session = event["data"]["object"]
    session.update(
        id=session_id,
        amount_total=amount_total,
        amount_subtotal=amount_total,
        currency=currency,
        payment_intent=payment_intent,
        payment_status=payment_status,
        metadata={"user_id": str(user_id), "package_id": package_id},
        client_reference_id=str(user_id) if client_reference_id == "same" else client_reference_id,
    )
    return event


def refund_event(*, event_id: str, payment_intent: str, amount_refunded: int, amount: int = 1000) -> dict:
    event = _load("charge.refunded")
    event["id"] = event_id
    charge = event["data"]["object"]
    charge.update(
        payment_intent=payment_intent,
        amount=amount,
        amount_captured=amount,
        amount_refunded=amount_refunded,
        refunded=amount_refunded >= amount,
    )
    return event


def dispute_event(*, event_id: str, payment_intent: str, amount: int) -> dict:
    event = _load("charge.dispute.created")
    event["id"] = event_id
    event["data"]["object"].update(payment_intent=payment_intent, amount=amount)
    return event


def signed(event: dict, *, secret: str | None = None, timestamp: int | None = None) -> tuple[str, str]:
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(
        body, secret or settings.STRIPE_WEBHOOK_SECRET, timestamp=timestamp or int(time.time())
    )
    return body, header


def deliver(client, event: dict, **sign_kwargs):
    body, header = signed(copy.deepcopy(event), **sign_kwargs)
    return client.post("/billing/webhook", data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def dispute_closed_event(*, event_id: str, payment_intent: str, dispute_id: str, amount: int, status: str) -> dict:
    event = _load("charge.dispute.closed")
    event["id"] = event_id
    event["data"]["object"].update(id=dispute_id, payment_intent=payment_intent, amount=amount, status=status)
    return event


def refund_updated_event(*, event_id: str, payment_intent: str, refund_id: str, amount: int, status: str) -> dict:
    event = _load("charge.refund.updated")
    event["id"] = event_id
    event["data"]["object"].update(id=refund_id, payment_intent=payment_intent, amount=amount, status=status)
    return event


def setup_intent_event(
    *, event_id: str, user_id, customer: str, payment_method: str, created: int | None = None
) -> dict:
    """`setup_intent.succeeded` for a card saved through Checkout in setup mode."""
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-05-27.dahlia",
        "created": created or int(time.time()),
        "livemode": False,
        "type": "setup_intent.succeeded",
        "data": {
            "object": {
                "id": f"seti_{event_id}",
                "object": "setup_intent",
                "customer": customer,
                "livemode": False,
                "metadata": {"user_id": str(user_id), "purpose": "auto_recharge_card"},
                "payment_method": payment_method,
                "status": "succeeded",
                "usage": "off_session",
            }
        },
    }


def payment_intent_event(*, event_id: str, intent: dict, event_type: str = "payment_intent.succeeded") -> dict:
    """A PaymentIntent event carrying `intent` (e.g. the fake Stripe's object)."""
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-05-27.dahlia",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": copy.deepcopy(intent)},
    }
