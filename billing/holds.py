"""Holds that outlived their expiry (e.g. a crashed worker's) give their credits back."""

import logging
from collections.abc import Callable

from django.utils import timezone

from billing import ledger
from billing.models import CreditHold, HoldStatus

logger = logging.getLogger("billing")


def expire_due_holds(*, batch_size: int = 500, progress: Callable[[int, int], None] | None = None) -> int:
    """Release every pending hold past `expires_at` as `expired`; returns how many.

    Each hold is released in its own transaction (one wallet lock at a time, then the hold,
    then its run: `ledger.expire_hold`); a hold captured or released meanwhile is skipped.
    """
    due = list(
        CreditHold.objects.filter(status=HoldStatus.PENDING, expires_at__lte=timezone.now())
        .order_by("expires_at")
        .values_list("pk", flat=True)[:batch_size]
    )
    expired = 0
    for index, hold_id in enumerate(due, start=1):
        try:
            hold = ledger.expire_hold(hold_id=hold_id)
        except ledger.HoldNotPending:
            continue
        expired += 1
        logger.info(
            "[Billing] Hold %s expired: %s credits released to user %s", hold.pk, hold.amount, hold.wallet.user_id
        )
        if progress:
            progress(index, len(due))
    return expired
