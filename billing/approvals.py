"""Four eyes on large staff grants and debits.

A staff grant or debit whose |credits| is above `FINANCE_APPROVAL_THRESHOLD` (0 = off) is not
executed: it becomes a pending `CreditApprovalRequest`. A different Finance user approves it —
which executes it through the ledger verb — or rejects it, which moves nothing. Nobody decides
a request they made, nor one that changes their own credits. Every request and decision stays
on the request row (who, when, note, ledger row); the admin adds its LogEntry history.

Lock order: approval request → wallet (inside the ledger verb). Nothing locks an approval
request after a wallet, so the ledger's order (wallet → hold → agent run) gains no cycle.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import ledger
from billing.models import ApprovalStatus, CreditApprovalRequest, CreditTransaction, LotCategory

logger = logging.getLogger("billing")


class ApprovalError(Exception):
    """A decision the four-eyes rules refuse; `detail` explains it to the Finance user."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class AlreadyDecided(ApprovalError):
    pass


class OwnRequest(ApprovalError):
    """The decider asked for this change, or it changes their own credits."""


class NoteRequired(ApprovalError):
    pass


@dataclass(frozen=True)
class CreditChange:
    """What a staff grant or debit did: moved credits (`executed`) or awaits approval (`approval`)."""

    executed: ledger.LedgerResult | None = None
    approval: CreditApprovalRequest | None = None
    replayed: bool = False


def needs_approval(amount: int) -> bool:
    threshold = settings.FINANCE_APPROVAL_THRESHOLD
    return threshold > 0 and abs(amount) > threshold


def change_credits(
    *,
    user_id: int,
    amount: int,
    reason: str,
    actor_id: int,
    idempotency_key: str | None = None,
    category: str = LotCategory.PROMOTIONAL,
    expires_at: datetime | None = None,
) -> CreditChange:
    """A staff grant (`amount` > 0, a lot of `category` expiring at `expires_at`) or debit
    (`amount` < 0, no lot terms): executed by the ledger at once, or — above the approval
    threshold — recorded as a pending approval request, nothing moved.

    Idempotent on `idempotency_key`: the same key replays the ledger row or the same request
    (whatever the threshold is by then); with different parameters `IdempotencyConflict`.
    Not atomic itself: the ledger verb owns its transaction, so it can retry deadlocks."""
    _validate_terms(amount, category, expires_at)
    fingerprint = _fingerprint(amount, reason, category, expires_at)
    if (existing := _request_under_key(user_id, idempotency_key, fingerprint)) is not None:
        return CreditChange(approval=existing, replayed=True)
    if needs_approval(amount) and not _ledger_row_under_key(user_id, idempotency_key):
        return request_approval(
            user_id=user_id,
            amount=amount,
            reason=reason,
            requested_by_id=actor_id,
            idempotency_key=idempotency_key,
            category=category,
            expires_at=expires_at,
        )
    # Below the threshold, or a key the ledger has seen: the verb replays its row or refuses the key.
    change = {"user_id": user_id, "amount": amount, "reason": reason, "actor_id": actor_id}
    if amount > 0:
        result = ledger.grant(**change, idempotency_key=idempotency_key, category=category, expires_at=expires_at)
    else:
        result = ledger.adjust(**change, idempotency_key=idempotency_key)
    return CreditChange(executed=result, replayed=result.replayed)


@transaction.atomic
def request_approval(
    *,
    user_id: int,
    amount: int,
    reason: str,
    requested_by_id: int,
    idempotency_key: str | None = None,
    category: str = LotCategory.PROMOTIONAL,
    expires_at: datetime | None = None,
) -> CreditChange:
    """Record a grant (with its lot terms) or debit for a second Finance user to decide; nothing
    moves. Idempotent on `idempotency_key`, concurrent twins included (the unique index decides)."""
    _validate(amount, reason)
    _validate_terms(amount, category, expires_at)
    fingerprint = _fingerprint(amount, reason, category, expires_at)
    if _ledger_row_under_key(user_id, idempotency_key):
        raise ledger.IdempotencyConflict("This Idempotency-Key was already used with different parameters.")
    try:
        with transaction.atomic():
            approval = CreditApprovalRequest.objects.create(
                user_id=user_id,
                credits=amount,
                reason=reason.strip(),
                requested_by_id=requested_by_id,
                idempotency_key=idempotency_key,
                request_fingerprint=fingerprint,
                lot_category=category if amount > 0 else None,
                lot_expires_at=expires_at if amount > 0 else None,
            )
    except IntegrityError:
        twin = _request_under_key(user_id, idempotency_key, fingerprint)
        if twin is None:
            raise
        return CreditChange(approval=twin, replayed=True)
    transaction.on_commit(
        lambda: logger.info(
            "[Billing] Approval requested: %+d credits for user %s by user %s (request %s)",
            amount,
            user_id,
            requested_by_id,
            approval.pk,
        )
    )
    return CreditChange(approval=approval)


@transaction.atomic
def approve_request(*, request_id: int, approver_id: int, note: str = "") -> CreditApprovalRequest:
    """Execute a pending request through the ledger and mark it approved, in one transaction.

    The ledger row's actor is the approver; its metadata names the request and the requester.
    Decided at most once: the request row is locked first, so of two approvers clicking at once
    the second finds it decided (`AlreadyDecided`). A grant comes in with the request's lot terms.
    A debit the wallet can no longer cover raises `InsufficientCredits`, and a grant whose expiry
    has passed meanwhile `InvalidLedgerRequest`; the request stays pending: reject it, or approve
    it again once the credits are there."""
    approval = _lock_undecided(request_id, decider_id=approver_id)
    change = {
        "user_id": approval.user_id,
        "amount": approval.credits,
        "reason": approval.reason,
        "actor_id": approver_id,
        "idempotency_key": f"approval:{approval.pk}",
        "metadata": {"approval_request_id": approval.pk, "requested_by_id": approval.requested_by_id},
    }
    if approval.credits > 0:
        result = ledger.grant(
            **change,
            category=approval.lot_category or LotCategory.PROMOTIONAL,
            expires_at=approval.lot_expires_at,
        )
    else:
        result = ledger.adjust(**change)
    _decide(approval, status=ApprovalStatus.APPROVED, decider_id=approver_id, note=note, row=result.transaction)
    return approval


@transaction.atomic
def reject_request(*, request_id: int, approver_id: int, note: str) -> CreditApprovalRequest:
    """Mark a pending request rejected; nothing moves. The note (why) is required."""
    if not note or not note.strip():
        raise NoteRequired("Say why the request is rejected: the note is required.")
    approval = _lock_undecided(request_id, decider_id=approver_id)
    _decide(approval, status=ApprovalStatus.REJECTED, decider_id=approver_id, note=note)
    return approval


def _fingerprint(
    amount: int, reason: str, category: str = LotCategory.PROMOTIONAL, expires_at: datetime | None = None
) -> str:
    """The request's parameters; lot terms only when they differ from the defaults, so keys used
    before grants took terms still replay."""
    params = {"verb": "staff_change", "amount": amount, "reason": (reason or "").strip()}
    if category != LotCategory.PROMOTIONAL:
        params["category"] = str(category)
    if expires_at is not None:
        params["expires_at"] = expires_at.astimezone(UTC).isoformat()
    return hashlib.sha256(json.dumps(params).encode()).hexdigest()


def _request_under_key(user_id: int, idempotency_key: str | None, fingerprint: str) -> CreditApprovalRequest | None:
    if not idempotency_key:
        return None
    existing = CreditApprovalRequest.objects.filter(user_id=user_id, idempotency_key=idempotency_key).first()
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise ledger.IdempotencyConflict("This Idempotency-Key was already used with different parameters.")
    return existing


def _ledger_row_under_key(user_id: int, idempotency_key: str | None) -> bool:
    return bool(idempotency_key) and (
        CreditTransaction.objects.filter(wallet__user_id=user_id, idempotency_key=idempotency_key).exists()
    )


def _validate(amount: int, reason: str) -> None:
    """The ledger's own rules, checked now so that no request is made that could never execute."""
    ledger.check_staff_amount(amount)
    if not reason or not reason.strip():
        raise ledger.InvalidLedgerRequest("A reason is required.")


def _validate_terms(amount: int, category: str, expires_at: datetime | None) -> None:
    """Lot terms belong to grants; a debit takes credits in burn order and opens no lot."""
    if amount < 0 and (category != LotCategory.PROMOTIONAL or expires_at is not None):
        raise ledger.InvalidLedgerRequest("Only a grant (positive credits) takes a category or an expiry.")
    if category not in LotCategory.values:
        raise ledger.InvalidLedgerRequest(f"The category must be one of: {', '.join(LotCategory.values)}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ledger.InvalidLedgerRequest("The expiry must be in the future.")


def _lock_undecided(request_id: int, *, decider_id: int) -> CreditApprovalRequest:
    approval = CreditApprovalRequest.objects.select_for_update().get(pk=request_id)
    if decider_id == approval.requested_by_id:
        raise OwnRequest("You requested this change: another Finance user must approve or reject it.")
    if decider_id == approval.user_id:
        raise OwnRequest("This request changes your own credits: another Finance user must approve or reject it.")
    if approval.status != ApprovalStatus.PENDING:
        raise AlreadyDecided(
            f"Request #{approval.pk} was already {approval.status} by {approval.decided_by} "
            f"at {approval.decided_at:%Y-%m-%d %H:%M:%S %Z}."
        )
    return approval


def _decide(
    approval: CreditApprovalRequest,
    *,
    status: str,
    decider_id: int,
    note: str,
    row: CreditTransaction | None = None,
) -> None:
    approval.status = status
    approval.decided_by_id = decider_id
    approval.decided_at = timezone.now()
    approval.decision_note = (note or "").strip()
    approval.transaction = row
    approval.save(update_fields=["status", "decided_by", "decided_at", "decision_note", "transaction"])
    transaction.on_commit(
        lambda: logger.info(
            "[Billing] Approval request %s %s by user %s (%+d credits for user %s)",
            approval.pk,
            status,
            decider_id,
            approval.credits,
            approval.user_id,
        )
    )
