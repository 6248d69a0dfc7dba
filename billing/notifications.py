"""E-mails to users about their money: low balance, a failed or disabled auto-recharge.

They come from the outbox (`billing.ledger.outbox`): an event of an e-mailed type is written
`email_pending` in the same transaction as the change, so a rolled-back change e-mails nobody.
`send_due` (Celery beat, with the webhook sweep) claims each by a conditional UPDATE with a
lease — two sweeps never send the same one at once, and one lost mid-send is sent again after
`LEASE` — and marks it sent. At least once; Django's e-mail backend (the console in development).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Q
from django.utils import timezone

from billing.models import OutboxEvent

logger = logging.getLogger("billing")

LEASE = timedelta(minutes=10)


def _message(event: OutboxEvent) -> tuple[str, str]:
    data = event.payload or {}
    if event.type == "balance.low":
        return (
            "Your credit balance is low",
            f"You have {data.get('available_credits')} credits available, below your alert threshold of "
            f"{data.get('threshold_credits')}. Buy credits or turn on auto-recharge so your runs do not stop.",
        )
    if event.type == "auto_recharge.failed":
        return (
            "Your auto-recharge failed",
            f"We could not charge your saved card for {data.get('package_id')} "
            f"({data.get('failure_code') or 'declined'}: {data.get('failure_reason') or 'no reason given'}). "
            f"{data.get('failures_in_row')} failure(s) in a row; after 3 auto-recharge turns itself off.",
        )
    return (
        "Auto-recharge is turned off",
        f"Auto-recharge was turned off: {data.get('reason')}. Check your card and turn it on again.",
    )


def send_due(*, limit: int = 200) -> int:
    """Send up to `limit` pending e-mails; how many were sent."""
    now = timezone.now()
    lease_over = Q(emailed_at__isnull=True) | Q(emailed_at__lt=now - LEASE)
    unclaimed = OutboxEvent.objects.filter(lease_over, email_pending=True)
    due = list(unclaimed.order_by("id").values_list("pk", flat=True)[:limit])
    sent = 0
    for event_id in due:
        claimed = unclaimed.filter(pk=event_id).update(emailed_at=now)
        if not claimed:
            continue
        event = OutboxEvent.objects.select_related("user").get(pk=event_id)
        if event.user is None or not event.user.email:
            OutboxEvent.objects.filter(pk=event_id).update(email_pending=False)
            continue
        subject, body = _message(event)
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [event.user.email])
        except Exception:
            logger.exception("Could not e-mail user %s about %s; the sweep retries it", event.user_id, event.type)
            OutboxEvent.objects.filter(pk=event_id).update(emailed_at=None)
            continue
        OutboxEvent.objects.filter(pk=event_id).update(email_pending=False, emailed_at=timezone.now())
        sent += 1
    return sent
