"""Credits coming in: staff grants and adjustments, Stripe purchases."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import timezone

from billing.ledger.errors import InsufficientCredits, InvalidLedgerRequest
from billing.ledger.lots import LotTerms
from billing.ledger.posting import (
    _count_after_commit,
    _fingerprint,
    _lock_wallet,
    _log_after_commit,
    _post,
    _refuse,
    _replay,
    _require_positive,
    check_staff_amount,
)
from billing.ledger.results import LedgerResult
from billing.ledger.retry import _money_verb
from billing.models import CreditTransaction, LotCategory, LotSource, TransactionKind


@_money_verb
def grant(
    *,
    user_id: int,
    amount: int,
    reason: str,
    actor_id: int | None = None,
    idempotency_key: str | None = None,
    metadata: dict | None = None,
    category: str = LotCategory.PROMOTIONAL,
    expires_at: datetime | None = None,
    priority: int = 0,
) -> LedgerResult:
    """Add `amount` credits (staff grant) as a lot of `category` (promotional unless said
    otherwise: a grant has no cost basis), expiring at `expires_at` (never by default).
    Idempotent on `idempotency_key`."""
    _require_positive(amount, limit=settings.BILLING_MAX_GRANT)
    if not reason or not reason.strip():
        raise InvalidLedgerRequest("A reason is required.")
    terms = _staff_lot_terms(LotSource.GRANT, category, expires_at, priority, actor_id)
    fingerprint = _fingerprint("grant", amount=amount, reason=reason, **_terms_fingerprint(terms))
    wallet = _lock_wallet(user_id)
    if existing := _replay(CreditTransaction, wallet=wallet, idempotency_key=idempotency_key, fingerprint=fingerprint):
        return LedgerResult(existing, replayed=True)
    row = _post(
        wallet=wallet,
        kind=TransactionKind.GRANT,
        amount=amount,
        terms=terms,
        reason=reason.strip(),
        actor_id=actor_id,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        metadata=metadata or {},
    )
    _log_after_commit("[Billing] Granted %s credits to user %s", amount, user_id)
    _count_after_commit(TransactionKind.GRANT, amount)
    return LedgerResult(row)


@_money_verb
def adjust(
    *,
    user_id: int,
    amount: int,
    reason: str,
    actor_id: int | None = None,
    idempotency_key: str | None = None,
    metadata: dict | None = None,
    category: str = LotCategory.PROMOTIONAL,
    expires_at: datetime | None = None,
    priority: int = 0,
) -> LedgerResult:
    """Correct a balance by a signed `amount` (staff). Credits added are a lot like a grant's;
    a debit takes available credits in burn order, never held or missing ones: if it exceeds
    the available balance, `InsufficientCredits` and nothing changes."""
    check_staff_amount(amount)
    if not reason or not reason.strip():
        raise InvalidLedgerRequest("A reason is required.")
    terms = _staff_lot_terms(LotSource.ADJUSTMENT, category, expires_at, priority, actor_id) if amount > 0 else None
    fingerprint = _fingerprint("adjust", amount=amount, reason=reason, **_terms_fingerprint(terms))
    wallet = _lock_wallet(user_id)
    if existing := _replay(CreditTransaction, wallet=wallet, idempotency_key=idempotency_key, fingerprint=fingerprint):
        return LedgerResult(existing, replayed=True)
    try:
        row = _post(
            wallet=wallet,
            kind=TransactionKind.ADJUSTMENT,
            amount=amount,
            terms=terms,
            reason=reason.strip(),
            actor_id=actor_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            metadata=metadata or {},
        )
    except InsufficientCredits as exc:
        _refuse(user_id, exc)
    _count_after_commit(TransactionKind.ADJUSTMENT, amount)
    verb = "Granted" if amount > 0 else "Debited"
    _log_after_commit(f"[Billing] {verb} %s credits {'to' if amount > 0 else 'from'} user %s", abs(amount), user_id)
    return LedgerResult(row)


@_money_verb
def purchase(
    *,
    user_id: int,
    amount: int,
    checkout_session_id: str,
    payment_intent_id: str | None,
    stripe_event_id: str,
    package_id: str,
    purchase_id: int | None = None,
    amount_cents: int = 0,
    currency: str = "",
    expires_at: datetime | None = None,
) -> LedgerResult:
    """Credit a paid Checkout Session as a paid lot whose cost basis is `amount_cents`, expiring
    at `expires_at` (never by default). Exactly once per session: the row's idempotency key is
    the session id, unique per wallet in the database, so a second event for the same session
    replays the first grant."""
    _require_positive(amount)
    fingerprint = _fingerprint("purchase", amount=amount, session=checkout_session_id, package=package_id)
    key = f"stripe-checkout:{checkout_session_id}"
    wallet = _lock_wallet(user_id)
    if existing := _replay(CreditTransaction, wallet=wallet, idempotency_key=key, fingerprint=fingerprint):
        return LedgerResult(existing, replayed=True)
    row = _post(
        wallet=wallet,
        kind=TransactionKind.PURCHASE,
        amount=amount,
        stripe_checkout_session_id=checkout_session_id,
        stripe_payment_intent_id=payment_intent_id,
        stripe_event_id=stripe_event_id,
        idempotency_key=key,
        request_fingerprint=fingerprint,
        reason=f"Purchase of {package_id}",
        metadata={"package_id": package_id},
        terms=LotTerms(
            category=LotCategory.PAID,
            expires_at=expires_at,
            cost_basis_cents=amount_cents,
            currency=currency,
            source=LotSource.PURCHASE,
            purchase_id=purchase_id,
        ),
    )
    _log_after_commit("[Billing] Granted %s credits to user %s", amount, user_id)
    _count_after_commit(TransactionKind.PURCHASE, amount)
    return LedgerResult(row)


def _staff_lot_terms(source: str, category: str, expires_at: datetime | None, priority: int, actor_id) -> LotTerms:
    if category not in LotCategory.values:
        raise InvalidLedgerRequest(f"The category must be one of: {', '.join(LotCategory.values)}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidLedgerRequest("The expiry must be in the future.")
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
        raise InvalidLedgerRequest("The priority must be a whole number from -1000 to 1000.")
    return LotTerms(category=category, expires_at=expires_at, priority=priority, source=source, actor_id=actor_id)


def _terms_fingerprint(terms: LotTerms | None) -> dict:
    """The lot terms a replay must repeat; none for the defaults, so keys used before lots
    existed still replay."""
    if terms is None:
        return {}
    given = {"category": str(terms.category), "expires_at": terms.expires_at, "priority": terms.priority}
    defaults = {"category": LotCategory.PROMOTIONAL.value, "expires_at": None, "priority": 0}
    return {name: value for name, value in given.items() if value != defaults[name]}
