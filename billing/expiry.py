"""The expiry sweep: every lot past its `expires_at` with credits not pinned by a hold."""

from collections.abc import Callable

from django.db.models import F
from django.utils import timezone

from billing import ledger
from billing.models import CreditLot


def expire_due_credits(*, batch_size: int = 500, progress: Callable[[int, int], None] | None = None) -> int:
    """Expire the free remainder of up to `batch_size` lots past their expiry, oldest expiry
    first, each in its own transaction (`ledger.expire_lot`: one wallet lock at a time).
    Returns how many lots had credits expired; safe to run on several servers at once."""
    due = list(
        CreditLot.objects.filter(expires_at__lte=timezone.now(), remaining_credits__gt=0)
        .filter(remaining_credits__gt=F("held_credits"))
        .order_by("expires_at", "id")
        .values_list("pk", flat=True)[:batch_size]
    )
    expired = 0
    for index, lot_id in enumerate(due, start=1):
        if ledger.expire_lot(lot_id=lot_id) is not None:
            expired += 1
        if progress:
            progress(index, len(due))
    return expired
