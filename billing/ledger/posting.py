"""What every verb shares: argument checks, the wallet lock, idempotency replays, posting a row."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import secrets
import time
import uuid
from typing import Any, NoReturn

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from billing import metrics
from billing.ledger import caps, lots, thresholds
from billing.ledger.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    SpendCapReached,
    WalletInShortfall,
)
from billing.ledger.lots import LotTerms
from billing.models import CreditTransaction, Wallet
from core.fields import CALL_KEY_PREFIX

logger = logging.getLogger("billing")


def _fingerprint(verb: str, **params: Any) -> str:
    canonical = json.dumps({"verb": verb, **params}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _charge_fingerprint(amount: int, agent_id: str) -> str:
    # Charges repeat few (amount, agent) pairs: no need to serialise and hash each one again.
    return _fingerprint("charge", amount=amount, agent_id=agent_id)


def _require_positive(amount: Any, *, limit: int | None = None) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidAmount("The amount must be a positive whole number of credits.")
    if limit is not None and amount > limit:
        raise InvalidAmount(f"The amount may not exceed {limit} credits.")
    return amount


def check_staff_amount(amount: Any) -> int:
    """A staff grant (> 0) or debit (< 0): a non-zero whole number of credits, |amount| at most
    `BILLING_MAX_GRANT`; otherwise `InvalidAmount`. The API, the admin and approvals check with this."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
        raise InvalidAmount("The amount must be a non-zero whole number of credits.")
    _require_positive(abs(amount), limit=settings.BILLING_MAX_GRANT)
    return amount


def lock_wallet(user_id: int) -> Wallet:
    """Lock the user's wallet row, creating the wallet on first use. Code outside the ledger that
    changes rows the ledger's statements read under the wallet lock (auto-recharge settings and
    attempts) locks the wallet first, in this one lock order."""
    try:
        return Wallet.objects.select_for_update().get(user_id=user_id)
    except Wallet.DoesNotExist:
        pass
    try:
        Wallet.objects.get_or_create(user_id=user_id)
    except IntegrityError as exc:
        # A duplicate: created this moment by a transaction on another Galera node, not yet
        # committed here (get_or_create's own read missed it; its savepoint rolled it back).
        # Anything else (no such user) is a real error.
        if not _is_duplicate_key(exc):
            raise
    try:
        return Wallet.objects.select_for_update().get(user_id=user_id)
    except Wallet.DoesNotExist:
        # Still not visible: a conflict with that other node's transaction, retried whole.
        raise OperationalError(1213, "The wallet was being created concurrently; run the transaction again.") from None


_lock_wallet = lock_wallet


def _replay(model, *, wallet: Wallet, idempotency_key: str | None, fingerprint: str):
    """Return the row already written under this key, or None. The wallet lock is held."""
    if not idempotency_key:
        return None
    return _same_request(model.objects.filter(wallet=wallet, idempotency_key=idempotency_key).first(), fingerprint)


def _same_request(existing, fingerprint: str):
    """`existing` (or None), unless it was written with other parameters: `IdempotencyConflict`."""
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict("This Idempotency-Key was already used with different parameters.")
    return existing


def _post(
    *,
    wallet: Wallet,
    kind: str,
    amount: int,
    terms: LotTerms | None = None,
    draw_from: list[int] | None = None,
    **fields: Any,
) -> CreditTransaction:
    """Move the locked wallet's balance by `amount` and write its ledger row — and its lot:
    credits in open a lot on `terms`; a debit takes available credits (never held ones) in
    burn order, from the lots `draw_from` only when given, and records its draws."""
    if amount < 0 and -amount > wallet.available_credits:
        raise InsufficientCredits(required=-amount, available=max(wallet.available_credits, 0))
    if amount > 0 and terms is None:
        raise TypeError("Credits coming in need the terms of their lot.")
    wallet.balance_credits += amount
    now = timezone.now()
    Wallet.objects.filter(pk=wallet.pk).update(balance_credits=wallet.balance_credits, updated_at=now)
    row = CreditTransaction.objects.create(
        wallet=wallet, kind=kind, amount=amount, balance_after=wallet.balance_credits, **fields
    )
    if amount > 0:
        lots.open_lot(wallet=wallet, row=row, terms=terms)
    else:
        lots.draw(wallet=wallet, row=row, amount=-amount, only_lot_ids=draw_from)
    # Alerts for any change; only usage (charges and holds, in their own plans) starts a
    # recharge: a claw-back, a staff debit or expiry leaves it armed for the next usage.
    thresholds.watch(wallet, debit=False)
    return row


def _log_after_commit(message: str, *args: Any) -> None:
    transaction.on_commit(lambda: logger.info(message, *args))


def _count_after_commit(kind: str, amount: int, agent_id: str | None = None) -> None:
    transaction.on_commit(lambda: metrics.credits(kind, agent_id or "").inc(abs(amount)))


def _refuse(user_id: int, exc: InsufficientCredits) -> NoReturn:
    logger.warning("[Billing] Error: Insufficient credits for user %s", user_id)
    metrics.REFUSALS.labels(reason="insufficient_credits").inc()
    raise exc


def _refuse_if_in_shortfall(wallet: Wallet) -> None:
    if wallet.shortfall_credits > 0:
        logger.warning("[Billing] Error: Wallet of user %s is in shortfall", wallet.user_id)
        metrics.REFUSALS.labels(reason="shortfall").inc()
        raise WalletInShortfall(shortfall=wallet.shortfall_credits)


def _uuid_hex(value: Any) -> str | None:
    return None if value is None else uuid.UUID(str(value)).hex  # how UUIDField stores it on MySQL and SQLite


def _key_of_call(key: str | None) -> str:
    """`key`, or for a call sent without one a key of its own (`call:<time><random>`, never a
    client's). With it the verb can be run again after its outcome became unknown (a connection
    lost mid-commit, a cluster node killed): if the first run committed, the second finds its row
    under the key and replays it instead of taking the credits twice. The time (ns, hex) comes
    first so that a wallet's new keys land at the end of its part of the unique index, not all
    over it; 64 random bits make two calls in the same nanosecond differ."""
    return key or f"{CALL_KEY_PREFIX}{time.time_ns():016x}{secrets.token_hex(8)}"


def _as_first_call(result, key: str | None, *, answer_lost: bool):
    """A replay that is this call's own earlier run, answered as what it is: the call's one
    result (logged and counted once, 201). Certainly so for a call that came without a key (its
    key is unique to the call); with a client's key, when an earlier run's answer was lost (a
    concurrent request with the same key could have won instead: then that one is counted too)."""
    if result.replayed and (not key or answer_lost):
        return dataclasses.replace(result, replayed=False)
    return result


def _is_duplicate_key(exc: IntegrityError) -> bool:
    # MariaDB 1062; SQLite says "UNIQUE constraint failed".
    return (bool(exc.args) and exc.args[0] == 1062) or "UNIQUE constraint failed" in str(exc)


def _replay_for_user(model, user_id: int, key: str | None, fingerprint: str):
    """The row already written under this key by this user's wallet, or None; a row written
    with other parameters raises `IdempotencyConflict`."""
    if not key:
        return None
    return _same_request(model.objects.filter(wallet__user_id=user_id, idempotency_key=key).first(), fingerprint)


def _explain_refusal(*, user_id: int, amount: int) -> None:
    """A debit or hold plan took nothing: say why, from what the wallet holds now. Returns
    (so the caller tries again) only when the wallet did not exist yet or now has the credits."""
    wallet = Wallet.objects.filter(user_id=user_id).first()
    if wallet is None:
        Wallet.objects.get_or_create(user_id=user_id)
        return
    _refuse_if_in_shortfall(wallet)
    if amount > wallet.available_credits:
        _refuse(user_id, InsufficientCredits(required=amount, available=max(wallet.available_credits, 0)))
    try:
        caps.refuse_if_over(wallet, amount)
    except SpendCapReached:
        logger.warning("[Billing] Error: Spend cap reached for user %s", user_id)
        metrics.REFUSALS.labels(reason="spend_cap").inc()
        raise


@functools.cache
def _row_fields() -> dict[str, Any]:
    return {field.attname: field for field in CreditTransaction._meta.concrete_fields}


def _loaded_row(alias: str, **values: Any) -> CreditTransaction:
    """A `CreditTransaction` as if read from `alias`, the fields not given at their defaults.
    Built positionally by `from_db`: about half the CPU of keyword construction."""
    fields = _row_fields()
    if unknown := values.keys() - fields.keys():
        raise TypeError(f"Not ledger row fields: {sorted(unknown)}")
    row = [values[name] if name in values else field.get_default() for name, field in fields.items()]
    return CreditTransaction.from_db(alias, None, row)
