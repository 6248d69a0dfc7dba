"""Credits past their lot's expiry leave the balance: one `expiry` row per lot remainder."""

from __future__ import annotations

from django.utils import timezone

from billing.ledger.posting import _count_after_commit, _fingerprint, _lock_wallet, _log_after_commit, _post
from billing.ledger.results import LedgerResult
from billing.ledger.retry import _money_verb
from billing.models import CreditLot, TransactionKind


@_money_verb
def expire_lot(*, lot_id: int) -> LedgerResult | None:
    """Take what is left of a lot past its `expires_at` out of the balance: one `expiry` row
    drawing from that lot alone. Credits pinned by pending holds are never taken — the run
    that reserved them pays with them; once released, the next sweep expires them.

    Exactly once per remainder: the lot is read again under the wallet lock, so a concurrent
    sweep finds nothing left to expire, and the row's key (lot, remaining) is unique per
    wallet. None when nothing is due."""
    user_id = CreditLot.objects.filter(pk=lot_id).values_list("wallet__user_id", flat=True).first()
    if user_id is None:
        raise CreditLot.DoesNotExist(f"No lot {lot_id}.")
    wallet = _lock_wallet(user_id)
    lot = CreditLot.objects.get(pk=lot_id)  # read committed, after the lock: current
    free = lot.remaining_credits - lot.held_credits
    if lot.expires_at is None or lot.expires_at > timezone.now() or free <= 0:
        return None
    row = _post(
        wallet=wallet,
        kind=TransactionKind.EXPIRY,
        amount=-free,
        draw_from=[lot.id],
        reason=f"Credits of lot {lot.id} expired at {lot.expires_at.isoformat()}",
        idempotency_key=f"expiry:lot-{lot.id}:{lot.remaining_credits}",
        request_fingerprint=_fingerprint("expiry", lot=lot.id, credits=free),
        metadata={"lot_id": lot.id, "category": lot.category},
    )
    _log_after_commit("[Billing] Expired %s %s credits of lot %s for user %s", free, lot.category, lot.id, user_id)
    _count_after_commit(TransactionKind.EXPIRY, free)
    return LedgerResult(row)
