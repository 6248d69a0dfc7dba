"""Refunds and disputes: claw-backs, their reversal, and staff settling a shortfall."""

from __future__ import annotations

import logging
import uuid

from django.db.models import Sum
from django.utils import timezone

from billing.ledger.errors import InvalidLedgerRequest
from billing.ledger.lots import LotTerms
from billing.ledger.posting import (
    _count_after_commit,
    _fingerprint,
    _lock_wallet,
    _log_after_commit,
    _post,
    _replay,
    _require_positive,
)
from billing.ledger.results import ClawbackResult, RestoreResult
from billing.ledger.retry import _money_verb
from billing.models import (
    CreditLot,
    CreditShortfall,
    CreditTransaction,
    LotCategory,
    LotSource,
    Purchase,
    TransactionKind,
    Wallet,
)

logger = logging.getLogger("billing")


@_money_verb
def clawback(
    *,
    user_id: int,
    amount: int,
    reason: str,
    idempotency_key: str,
    purchase_id: int | None = None,
    payment_intent_id: str | None = None,
    stripe_event_id: str = "",
) -> ClawbackResult:
    """Take back up to `amount` credits after a refund or dispute from the purchase's own lots
    (those it bought and any restored to it), never below zero and never from credits held for
    running work. What was already spent or is held is recorded as a shortfall on the wallet,
    which then refuses charges until staff settle it. Idempotent on the key."""
    _require_positive(amount)
    fingerprint = _fingerprint("clawback", amount=amount, purchase=purchase_id)
    wallet = _lock_wallet(user_id)
    existing_row = _replay(CreditTransaction, wallet=wallet, idempotency_key=idempotency_key, fingerprint=fingerprint)
    existing_shortfall = CreditShortfall.objects.filter(wallet=wallet, idempotency_key=idempotency_key).first()
    if existing_row or existing_shortfall:
        return ClawbackResult(
            existing_row,
            clawed_back=-existing_row.amount if existing_row else 0,
            shortfall=existing_shortfall.amount if existing_shortfall else 0,
        )
    own_lots = (
        list(
            CreditLot.objects.filter(wallet=wallet, purchase_id=purchase_id).values_list(
                "id", "remaining_credits", "held_credits"
            )
        )
        if purchase_id is not None
        else []
    )
    if own_lots:  # the purchase's own credits, as far as they are unspent and not held
        draw_from = [lot_id for lot_id, _, _ in own_lots]
        taken = min(amount, sum(remaining - held for _, remaining, held in own_lots))
    else:  # bought before lots existed (its credits are in the opening lot): what is available
        draw_from = None
        taken = min(amount, max(wallet.available_credits, 0))
    shortfall = amount - taken
    row = None
    if taken:
        row = _post(
            wallet=wallet,
            kind=TransactionKind.CLAWBACK,
            amount=-taken,
            draw_from=draw_from,
            reason=reason,
            stripe_payment_intent_id=payment_intent_id,
            stripe_event_id=stripe_event_id or None,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            metadata={"purchase_id": purchase_id, "requested": amount, "shortfall": shortfall},
        )
    if shortfall:
        # The key marks this shortfall so a replay finds it even when no row was written.
        CreditShortfall.objects.create(
            wallet=wallet, purchase_id=purchase_id, amount=shortfall, idempotency_key=idempotency_key
        )
        Wallet.objects.filter(pk=wallet.pk).update(
            shortfall_credits=wallet.shortfall_credits + shortfall, updated_at=timezone.now()
        )
        logger.warning("[Billing] Error: Shortfall of %s credits recorded for user %s", shortfall, user_id)
    if taken:
        _count_after_commit(TransactionKind.CLAWBACK, taken)
    return ClawbackResult(row, clawed_back=taken, shortfall=shortfall)


@_money_verb
def restore_clawback(
    *,
    user_id: int,
    amount: int,
    reason: str,
    purchase_id: int,
    idempotency_key: str,
    payment_intent_id: str | None = None,
    stripe_event_id: str = "",
) -> RestoreResult:
    """Give back up to `amount` clawed-back credits of a purchase whose refund failed or whose
    dispute was won. What was never taken (an open shortfall of that purchase) is cancelled
    first; the rest returns to the balance as one positive `clawback` row, never more than was
    actually taken from this purchase. Idempotent on the key."""
    _require_positive(amount)
    fingerprint = _fingerprint("restore", amount=amount, purchase=purchase_id)
    wallet = _lock_wallet(user_id)
    if existing := _replay(CreditTransaction, wallet=wallet, idempotency_key=idempotency_key, fingerprint=fingerprint):
        return RestoreResult(existing, restored=existing.amount, cancelled=0)
    remaining, cancelled = amount, 0
    for item in (
        CreditShortfall.objects.select_for_update()
        .filter(wallet=wallet, purchase_id=purchase_id, settled_at__isnull=True)
        .order_by("-id")
    ):
        part = min(remaining, item.amount - item.cancelled_credits)
        if part:
            item.cancelled_credits += part
            item.save(update_fields=["cancelled_credits"])
            remaining, cancelled = remaining - part, cancelled + part
    if cancelled:
        Wallet.objects.filter(pk=wallet.pk).update(
            shortfall_credits=wallet.shortfall_credits - cancelled, updated_at=timezone.now()
        )
    taken = -(
        CreditTransaction.objects.filter(
            wallet=wallet, kind=TransactionKind.CLAWBACK, metadata__purchase_id=purchase_id
        ).aggregate(total=Sum("amount"))["total"]
        or 0
    )
    give_back = min(remaining, max(taken, 0))
    row = None
    if give_back:
        row = _post(
            wallet=wallet,
            kind=TransactionKind.CLAWBACK,
            amount=give_back,
            reason=reason,
            stripe_payment_intent_id=payment_intent_id,
            stripe_event_id=stripe_event_id or None,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            metadata={"purchase_id": purchase_id, "restores": amount, "cancelled_shortfall": cancelled},
            terms=_restored_lot_terms(purchase_id, give_back),
        )
        _log_after_commit("[Billing] Granted %s credits to user %s", give_back, user_id)
    if remaining > give_back:
        logger.warning(
            "[Billing] %s credits of purchase %s were settled or written off before the reversal; not given back",
            remaining - give_back,
            purchase_id,
        )
    return RestoreResult(row, restored=give_back, cancelled=cancelled)


@_money_verb
def settle_shortfall(*, user_id: int, actor_id: int, reason: str) -> ClawbackResult:
    """Staff settle a wallet's shortfall: collect what the available balance now covers (one
    `clawback` row) and write off the rest — except credits still held for running work,
    which stay owed: refunded credits never become spendable by waiting for a release. While
    anything is owed the wallet takes no charges and no holds; settle again once the holds end.
    `ClawbackResult.shortfall` is what was written off, `still_owed` what stays open."""
    if not reason or not reason.strip():
        raise InvalidLedgerRequest("A reason is required.")
    wallet = _lock_wallet(user_id)
    open_shortfalls = list(CreditShortfall.objects.filter(wallet=wallet, settled_at__isnull=True).order_by("id"))
    owed = wallet.shortfall_credits
    collect = min(owed, max(wallet.available_credits, 0))
    still_owed = min(owed - collect, wallet.held_credits)
    row = None
    if collect:
        row = _post(
            wallet=wallet,
            kind=TransactionKind.CLAWBACK,
            amount=-collect,
            reason=reason.strip(),
            actor_id=actor_id,
            metadata={"settles_shortfall": owed},
        )
    to_collect, to_carry = collect, still_owed
    now = timezone.now()
    for item in open_shortfalls:
        item_owed = item.amount - item.cancelled_credits
        collected = min(item_owed, to_collect)
        carried = min(item_owed - collected, to_carry)
        to_collect, to_carry = to_collect - collected, to_carry - carried
        item.collected_credits = collected
        item.written_off_credits = item_owed - collected - carried
        item.settled_at = now
        item.settled_by_id = actor_id
        item.settlement_reason = reason.strip() + (f" ({carried} credits held, still owed)" if carried else "")
        item.save(
            update_fields=[
                "collected_credits",
                "written_off_credits",
                "settled_at",
                "settled_by",
                "settlement_reason",
            ]
        )
    if still_owed:
        CreditShortfall.objects.create(
            wallet=wallet, amount=still_owed, idempotency_key=f"held-at-settlement:{uuid.uuid4().hex}"
        )
    Wallet.objects.filter(pk=wallet.pk).update(shortfall_credits=still_owed, updated_at=now)
    if collect:
        _count_after_commit(TransactionKind.CLAWBACK, collect)
    return ClawbackResult(row, clawed_back=collect, shortfall=owed - collect - still_owed, still_owed=still_owed)


def _restored_lot_terms(purchase_id: int, credits: int) -> LotTerms:
    """Given-back credits are paid credits of the purchase again: its share of the price, its expiry."""
    bought = Purchase.objects.get(pk=purchase_id)
    first_lot = CreditLot.objects.filter(purchase_id=purchase_id).order_by("id").first()
    return LotTerms(
        category=LotCategory.PAID,
        expires_at=first_lot.expires_at if first_lot else None,
        cost_basis_cents=credits * bought.amount_cents // bought.credits,
        currency=bought.currency,
        source=LotSource.RESTORED_CLAWBACK,
        purchase_id=purchase_id,
    )
