"""Signed event webhooks to the product's backend: an outbox, delivered at least once.

`emit` writes an event — and one delivery per registered endpoint that wants it — inside the
caller's transaction, so an event exists if and only if the change that caused it committed; a
rollback sends nothing. After the commit a Celery task delivers it; `deliver_due` (Celery beat,
`deliver_webhooks`) retries what failed or was never sent, with back-off, for up to
`WEBHOOK_RETRY_HOURS` (3 days).

Each delivery is a POST of the exact JSON bytes `{"type", "timestamp", "data"}` signed as the
Standard Webhooks specification says (`webhook-id` = the event's id, unique per event, for the
receiver to de-duplicate; `webhook-timestamp`; `webhook-signature` = `v1,<base64 HMAC-SHA256>`
over `id.timestamp.body`, made by the `standardwebhooks` reference implementation). Redirects are
not followed; a 2xx answer delivers; anything else, a timeout or a refused connection is retried.
An attempt is claimed by a conditional UPDATE (no lock is held over the HTTP call), so two sweeps
never send the same attempt at once; a crash after sending and before recording sends it again
later — at least once, never lost.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import current_app as celery_app
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from standardwebhooks import Webhook

from billing.ledger.outbox import event_steps
from billing.ledger.sql import Step, run_plan
from billing.models import DeliveryStatus, OutboxEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger("billing")

# Back-off after the n-th failed attempt (Standard Webhooks' suggestion), then every 10 hours.
RETRY_AFTER = [
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
]
LATER = timedelta(hours=10)
# While an attempt is in flight its delivery is not due (a crashed sender's attempt is retried after it).
CLAIM = timedelta(minutes=2)

_listeners: list[Callable[[OutboxEvent], None]] = []


def emit(event_type: str, data: dict[str, Any], *, user_id: int | None = None) -> OutboxEvent:
    """Record `event_type` with `data` in the current transaction, with a delivery for each
    active endpoint that wants it; they are sent after the commit (never after a rollback)."""
    steps, event_id = event_steps(event_type, data, user_id=user_id)
    run_plan(steps)
    event = OutboxEvent.objects.get(event_id=event_id)
    ids = list(event.deliveries.values_list("pk", flat=True))
    if ids:
        transaction.on_commit(lambda: _queue(ids))
    return event


def emit_steps(event_type: str, data: dict[str, Any], *, user_id: int | None = None) -> list[Step]:
    """`emit` as statements for a ledger plan (`then=`), committed with it and only with it: the
    event's row and a delivery for each active endpoint that wants it (chosen in SQL, so it costs
    no round trip). The delivery sweep (`deliver_due`, every DELIVER_WEBHOOKS_EVERY_SECONDS) sends them."""
    return event_steps(event_type, data, user_id=user_id)[0]


def _queue(delivery_ids: list[int]) -> None:
    for delivery_id in delivery_ids:
        try:
            # Found by name: `billing.tasks` imports this module.
            celery_app.tasks["billing.deliver_webhook"].delay(delivery_id)
        except Exception:  # the broker is down: the sweep sends it
            logger.exception("Could not queue webhook delivery %s; the sweep will send it", delivery_id)


def body_of(event: OutboxEvent) -> bytes:
    """The exact bytes sent (and signed) for `event`."""
    envelope = {"type": event.type, "timestamp": event.created_at.isoformat(), "data": event.payload}
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def signed_headers(endpoint: WebhookEndpoint, event: OutboxEvent, body: bytes, at: datetime) -> dict[str, str]:
    signature = Webhook(endpoint.secret).sign(msg_id=event.event_id, timestamp=at, data=body.decode())
    return {
        "Content-Type": "application/json",
        "User-Agent": "credit-ledger-webhooks/1",
        "webhook-id": event.event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx is an answer like any other non-2xx: retried, not followed


_opener = urllib.request.build_opener(_NoRedirects)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str, str]:
    """(status, response excerpt, error) of one POST."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            return response.status, response.read(500).decode(errors="replace"), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(500).decode(errors="replace") if exc.fp else "", ""
    except Exception as exc:  # timeouts, refused connections, bad URLs: retried
        return None, "", f"{type(exc).__name__}: {exc}"[:500]


def next_attempt(attempts: int, now: datetime) -> datetime:
    return now + (RETRY_AFTER[attempts - 1] if attempts <= len(RETRY_AFTER) else LATER)


def deliver(delivery_id: int) -> str | None:
    """One attempt of a due delivery; its status after it, or None if it was not due (delivered,
    given up, or being attempted elsewhere)."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + CLAIM, attempts=F("attempts") + 1)
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("event", "endpoint").get(pk=delivery_id)
    body = body_of(delivery.event)
    started = time.monotonic()
    status, excerpt, error = _post(
        delivery.endpoint.url, body, signed_headers(delivery.endpoint, delivery.event, body, now)
    )
    WebhookAttempt.objects.create(
        delivery=delivery,
        status_code=status,
        duration_ms=int((time.monotonic() - started) * 1000),
        error=error,
        response_excerpt=excerpt,
    )
    ok = status is not None and 200 <= status < 300
    finished = timezone.now()
    if ok:
        fields = {"status": DeliveryStatus.DELIVERED, "delivered_at": finished}
    elif finished - delivery.event.created_at >= timedelta(hours=settings.WEBHOOK_RETRY_HOURS):
        fields = {"status": DeliveryStatus.FAILED}
        logger.warning("[Billing] Error: Webhook %s to %s given up", delivery.event.event_id, delivery.endpoint.url)
    else:
        fields = {"next_attempt_at": next_attempt(delivery.attempts, finished)}
    WebhookDelivery.objects.filter(pk=delivery_id).update(
        last_status_code=status, last_error=error or (excerpt if not ok else ""), **fields
    )
    return fields.get("status", DeliveryStatus.PENDING)


def deliver_due(*, limit: int = 500) -> int:
    """Attempt up to `limit` due deliveries (the oldest first); how many were delivered."""
    due = list(
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(deliver(delivery_id) == DeliveryStatus.DELIVERED for delivery_id in due)


def resend(delivery_id: int) -> None:
    """Staff's resend: the delivery is due again now (given-up ones included)."""
    WebhookDelivery.objects.filter(pk=delivery_id).update(status=DeliveryStatus.PENDING, next_attempt_at=timezone.now())
    transaction.on_commit(lambda: _queue([delivery_id]))
