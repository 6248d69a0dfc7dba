"""The only code that changes wallet balances.

Every verb here:
- runs in one database transaction and locks the wallet row (`SELECT … FOR UPDATE`, or
  for a charge on MariaDB the conditional UPDATE that also checks the balance) before
  reading the balance, so concurrent calls on one wallet serialise and no update is lost;
- writes exactly one immutable `CreditTransaction` carrying `balance_after` for every
  change of the balance (holds move `held_credits` only and write a `CreditHold`);
- is idempotent on its `idempotency_key`: the same key replays the first result, the
  same key with different parameters raises `IdempotencyConflict`;
- retries lock-wait timeouts and deadlocks itself when it owns the transaction, and
  raises `LedgerBusy` (retryable, never a 500) if they persist.

Lock order is always wallet, then hold, and no verb locks two wallets.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from billing import metrics
from billing.models import CreditHold, CreditShortfall, CreditTransaction, HoldStatus, TransactionKind, Wallet

logger = logging.getLogger("billing")

# MySQL/MariaDB error numbers worth retrying: lock wait timeout, deadlock.
_RETRYABLE_MYSQL_ERRORS = {1205, 1213}
_MAX_ATTEMPTS = 5
_TIMED_VERBS = {"capture"}  # and `charge`, timed as a whole


class LedgerError(Exception):
    """A refusal the caller can explain to the user; mapped to HTTP in `billing.errors`."""

    error_code = "LEDGER_ERROR"
    status_code = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def extra(self) -> dict[str, Any]:
        return {}


class InsufficientCredits(LedgerError):
    error_code = "BILLING_INSUFFICIENT_CREDITS"
    status_code = 402

    def __init__(self, *, required: int, available: int):
        super().__init__(f"This needs {required} credits but only {available} are available.")
        self.required = required
        self.available = available

    def extra(self) -> dict[str, Any]:
        return {"required": self.required, "available": self.available}


class WalletInShortfall(LedgerError):
    """A refund or dispute took back credits the wallet no longer had; staff must settle it first."""

    error_code = "BILLING_WALLET_IN_SHORTFALL"
    status_code = 402

    def __init__(self, *, shortfall: int):
        super().__init__(
            f"This account owes {shortfall} credits from a refunded or disputed purchase; "
            "charges are paused until support settles it."
        )
        self.shortfall = shortfall

    def extra(self) -> dict[str, Any]:
        return {"shortfall": self.shortfall}


class InvalidLedgerRequest(LedgerError):
    error_code = "INVALID_REQUEST"


class InvalidAmount(InvalidLedgerRequest):
    error_code = "INVALID_AMOUNT"


class IdempotencyConflict(LedgerError):
    error_code = "IDEMPOTENCY_KEY_REUSED"
    status_code = 409


class HoldNotPending(LedgerError):
    error_code = "HOLD_NOT_PENDING"
    status_code = 409


class HoldExpired(HoldNotPending):
    error_code = "HOLD_EXPIRED"


class LedgerBusy(LedgerError):
    error_code = "LEDGER_BUSY"
    status_code = 503


@dataclass(frozen=True)
class LedgerResult:
    transaction: CreditTransaction
    replayed: bool = False

    @property
    def balance_after(self) -> int:
        return self.transaction.balance_after


@dataclass(frozen=True)
class ClawbackResult:
    transaction: CreditTransaction | None
    clawed_back: int
    shortfall: int


@dataclass(frozen=True)
class HoldResult:
    hold: CreditHold
    replayed: bool = False


T = TypeVar("T")


def is_retryable_error(exc: OperationalError) -> bool:
    """A lock-wait timeout or deadlock: the whole transaction may simply be run again."""
    return bool(exc.args) and exc.args[0] in _RETRYABLE_MYSQL_ERRORS


def _with_retries(attempt: Callable[[], T]) -> T:
    """Run one whole transaction, `attempt()`, again after a lock-wait timeout or deadlock when
    we own the transaction; `LedgerBusy` (retryable, never a 500) if they persist."""
    for number in range(1, _MAX_ATTEMPTS + 1):
        try:
            return attempt()
        except OperationalError as exc:
            if not is_retryable_error(exc):
                raise
            if connection.in_atomic_block:
                # An outer transaction owns the locks; only its owner can retry.
                raise LedgerBusy("The wallet is busy; retry the request.") from exc
            if number == _MAX_ATTEMPTS:
                raise LedgerBusy("The wallet is busy; retry the request.") from exc
            time.sleep(random.uniform(0, 0.02 * number))
    raise AssertionError("unreachable")


def _money_verb(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` in its own transaction (a savepoint inside a caller's), with `_with_retries`."""

    timer = (lambda: metrics.timed(fn.__name__)) if fn.__name__ in _TIMED_VERBS else contextlib.nullcontext

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> T:
        def attempt() -> T:
            with transaction.atomic():
                return fn(**kwargs)

        with timer():
            return _with_retries(attempt)

    return wrapper


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


def _lock_wallet(user_id: int) -> Wallet:
    """Lock the user's wallet row, creating the wallet on first use."""
    try:
        return Wallet.objects.select_for_update().get(user_id=user_id)
    except Wallet.DoesNotExist:
        Wallet.objects.get_or_create(user_id=user_id)
        return Wallet.objects.select_for_update().get(user_id=user_id)


def _replay(model, *, wallet: Wallet, idempotency_key: str | None, fingerprint: str):
    """Return the row already written under this key, or None. The wallet lock is held."""
    if not idempotency_key:
        return None
    existing = model.objects.filter(wallet=wallet, idempotency_key=idempotency_key).first()
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict("This Idempotency-Key was already used with different parameters.")
    return existing


def _post(
    *,
    wallet: Wallet,
    kind: str,
    amount: int,
    held_delta: int = 0,
    **fields: Any,
) -> CreditTransaction:
    """Move the locked wallet's balance by `amount` and write its ledger row.

    Debits may only take available credits (those not held), except when they consume
    a hold (`held_delta` < 0), whose credits were reserved for exactly this.
    """
    available = wallet.balance_credits - wallet.held_credits - held_delta
    if amount < 0 and -amount > available:
        raise InsufficientCredits(required=-amount, available=max(wallet.available_credits, 0))
    wallet.balance_credits += amount
    wallet.held_credits += held_delta
    now = timezone.now()
    Wallet.objects.filter(pk=wallet.pk).update(
        balance_credits=wallet.balance_credits, held_credits=wallet.held_credits, updated_at=now
    )
    return CreditTransaction.objects.create(
        wallet=wallet, kind=kind, amount=amount, balance_after=wallet.balance_credits, **fields
    )


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


@_money_verb
def grant(
    *,
    user_id: int,
    amount: int,
    reason: str,
    actor_id: int | None = None,
    idempotency_key: str | None = None,
    metadata: dict | None = None,
) -> LedgerResult:
    """Add `amount` free credits (staff grant). Idempotent on `idempotency_key`."""
    _require_positive(amount, limit=settings.BILLING_MAX_GRANT)
    if not reason or not reason.strip():
        raise InvalidLedgerRequest("A reason is required.")
    fingerprint = _fingerprint("grant", amount=amount, reason=reason)
    wallet = _lock_wallet(user_id)
    if existing := _replay(CreditTransaction, wallet=wallet, idempotency_key=idempotency_key, fingerprint=fingerprint):
        return LedgerResult(existing, replayed=True)
    row = _post(
        wallet=wallet,
        kind=TransactionKind.GRANT,
        amount=amount,
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
) -> LedgerResult:
    """Correct a balance by a signed `amount` (staff). A debit never takes held or missing
    credits: if it exceeds the available balance, `InsufficientCredits` and nothing changes."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
        raise InvalidAmount("The amount must be a non-zero whole number of credits.")
    _require_positive(abs(amount), limit=settings.BILLING_MAX_GRANT)
    if not reason or not reason.strip():
        raise InvalidLedgerRequest("A reason is required.")
    fingerprint = _fingerprint("adjust", amount=amount, reason=reason)
    wallet = _lock_wallet(user_id)
    if existing := _replay(CreditTransaction, wallet=wallet, idempotency_key=idempotency_key, fingerprint=fingerprint):
        return LedgerResult(existing, replayed=True)
    try:
        row = _post(
            wallet=wallet,
            kind=TransactionKind.ADJUSTMENT,
            amount=amount,
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


def charge(
    *,
    user_id: int,
    amount: int,
    agent_id: str,
    idempotency_key: str | None = None,
    agent_run_id: Any = None,
    metadata: dict | None = None,
) -> LedgerResult:
    """Take `amount` available credits for one use of `agent_id`; never overdraws.

    On MariaDB the common case is `_debit_in_place`'s one round trip; anything unusual
    (no wallet yet, too few credits, a shortfall, a reused idempotency key, another database)
    takes the locked path, which explains the refusal or replays the first result."""
    _require_positive(amount)
    fields = {
        "kind": TransactionKind.CHARGE,
        "amount": -amount,
        "agent_id": agent_id,
        "agent_run_id": agent_run_id,
        "idempotency_key": idempotency_key,
        "request_fingerprint": _charge_fingerprint(amount, agent_id),
        "metadata": metadata or {},
    }
    with metrics.timed("charge"):
        row = None
        if _in_place_debits_supported():
            with contextlib.suppress(_KeyAlreadyUsed):  # rolled back; the locked path replays it
                row = _with_retries(lambda: _debit_in_place(user_id=user_id, **fields))
        if row is None:
            return _charge_locked(user_id=user_id, fields=fields)
        _after_charge(user_id, amount, agent_id)
        return LedgerResult(row)


@_money_verb
def _charge_locked(*, user_id: int, fields: dict[str, Any]) -> LedgerResult:
    wallet = _lock_wallet(user_id)
    if existing := _replay(
        CreditTransaction,
        wallet=wallet,
        idempotency_key=fields["idempotency_key"],
        fingerprint=fields["request_fingerprint"],
    ):
        return LedgerResult(existing, replayed=True)
    _refuse_if_in_shortfall(wallet)
    try:
        row = _post(wallet=wallet, **fields)
    except InsufficientCredits as exc:
        _refuse(user_id, exc)
    _after_charge(user_id, -fields["amount"], fields["agent_id"])
    return LedgerResult(row)


def _after_charge(user_id: int, amount: int, agent_id: str) -> None:
    _log_after_commit("[Billing] Charged %s credits from user %s for agent %s", amount, user_id, agent_id)
    _count_after_commit(TransactionKind.CHARGE, amount, agent_id)


class _KeyAlreadyUsed(Exception):
    """The fast path met an earlier row with the same idempotency key."""


def _in_place_debits_supported() -> bool:
    # INSERT … RETURNING and BEGIN NOT ATOMIC are MariaDB's (10.5+); MySQL and SQLite take the locked path.
    db = transaction.get_connection()
    return db.vendor == "mysql" and db.mysql_is_mariadb and db.mysql_version >= (10, 5)


_TXN_COLUMNS = ("kind", "amount", "agent_id", "agent_run_id", "idempotency_key", "request_fingerprint", "metadata")
_DEBIT_WALLET_SQL = (
    "UPDATE credit_wallets SET balance_credits = balance_credits - %s, updated_at = %s "
    "WHERE user_id = %s AND shortfall_credits = 0 AND balance_credits - held_credits >= %s"
)
_INSERT_TXN_SQL = (
    "INSERT INTO credit_transactions (wallet_id, balance_after, created_at, reason, {columns}) "
    "SELECT id, balance_credits, %s, '', {values} FROM credit_wallets WHERE user_id = %s "
    "RETURNING id, wallet_id, balance_after"
).format(columns=", ".join(_TXN_COLUMNS), values=", ".join(["%s"] * len(_TXN_COLUMNS)))


def _debit_block(*, own_transaction: bool) -> str:
    """The whole debit as one MariaDB compound statement, so one round trip: the conditional
    UPDATE, and only if it took the credits, the INSERT … RETURNING of the ledger row."""
    begin, commit = ("START TRANSACTION; ", " COMMIT;") if own_transaction else ("", "")
    return (
        f"BEGIN NOT ATOMIC {begin}{_DEBIT_WALLET_SQL}; IF ROW_COUNT() = 1 THEN {_INSERT_TXN_SQL}; END IF;{commit} END"
    )


def _debit_in_place(*, user_id: int, **fields: Any) -> CreditTransaction | None:
    """A debit in one round trip: a conditional UPDATE that takes the credits only if they are
    available (locking the wallet row), then an INSERT … SELECT … RETURNING that writes the
    ledger row with the new balance — sent together as one compound statement.

    Outside a transaction the statement carries its own START TRANSACTION … COMMIT (Django's
    `atomic` would add three round trips: autocommit off, COMMIT, autocommit on); inside a
    caller's transaction it runs in a savepoint.

    Returns None, having changed nothing, when the UPDATE matched no row (no wallet yet, not
    enough credits, a shortfall). Raises `_KeyAlreadyUsed` when the idempotency key exists,
    after rolling back."""
    db = transaction.get_connection()  # looked up once: `connection.x` looks it up on every use
    amount = -fields["amount"]
    now = timezone.now()
    at = db.ops.adapt_datetimefield_value(now)
    run_id = fields["agent_run_id"]
    values = [
        str(fields["kind"]),
        fields["amount"],
        fields["agent_id"],
        None if run_id is None else uuid.UUID(str(run_id)).hex,  # how UUIDField stores it on MySQL
        fields["idempotency_key"],
        fields["request_fingerprint"],
        json.dumps(fields["metadata"]),
    ]
    params = [amount, at, user_id, amount, at, *values, user_id]
    try:
        if db.in_atomic_block or not db.get_autocommit():
            with transaction.atomic(), db.cursor() as cursor:
                found = _run_block(cursor, _debit_block(own_transaction=False), params)
        else:
            with db.cursor() as cursor:
                try:
                    found = _run_block(cursor, _debit_block(own_transaction=True), params)
                except BaseException:
                    # A failed statement leaves the block's transaction open.
                    with contextlib.suppress(DatabaseError):
                        cursor.execute("ROLLBACK")
                    raise
    except IntegrityError as exc:
        if exc.args and exc.args[0] == 1062 and fields["idempotency_key"]:
            raise _KeyAlreadyUsed from exc
        raise
    if found is None:
        return None
    row_id, wallet_id, balance_after = found
    return _loaded_row(db.alias, id=row_id, wallet_id=wallet_id, balance_after=balance_after, created_at=now, **fields)


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


def _run_block(cursor, sql: str, params: list[Any]) -> tuple | None:
    """Execute a compound statement; its RETURNING row, if any, after reading every result
    (an error after the row — a failed COMMIT — surfaces while reading the rest)."""
    cursor.execute(sql, params)
    found = cursor.fetchone() if cursor.description else None
    while cursor.nextset():
        pass
    return found


@_money_verb
def hold(
    *,
    user_id: int,
    amount: int,
    agent_id: str,
    idempotency_key: str | None = None,
    expires_at: datetime | None = None,
) -> HoldResult:
    """Reserve `amount` available credits: `held_credits` grows, the balance does not."""
    _require_positive(amount)
    fingerprint = _fingerprint("hold", amount=amount, agent_id=agent_id)
    wallet = _lock_wallet(user_id)
    if existing := _replay(CreditHold, wallet=wallet, idempotency_key=idempotency_key, fingerprint=fingerprint):
        return HoldResult(existing, replayed=True)
    _refuse_if_in_shortfall(wallet)
    if amount > wallet.available_credits:
        _refuse(user_id, InsufficientCredits(required=amount, available=wallet.available_credits))
    Wallet.objects.filter(pk=wallet.pk).update(held_credits=wallet.held_credits + amount, updated_at=timezone.now())
    wallet.held_credits += amount
    created = CreditHold.objects.create(
        wallet=wallet,
        amount=amount,
        agent_id=agent_id,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        expires_at=expires_at or timezone.now() + settings.BILLING_HOLD_TTL,
    )
    return HoldResult(created)


def _lock_pending_hold(hold_id: int) -> tuple[Wallet, CreditHold]:
    wallet_user_id = CreditHold.objects.filter(pk=hold_id).values_list("wallet__user_id", flat=True).first()
    if wallet_user_id is None:
        raise CreditHold.DoesNotExist(f"No hold {hold_id}.")
    wallet = _lock_wallet(wallet_user_id)
    locked = CreditHold.objects.select_for_update().get(pk=hold_id)
    if locked.status != HoldStatus.PENDING:
        raise HoldNotPending(f"Hold {hold_id} is already {locked.status}.")
    return wallet, locked


@_money_verb
def capture(*, hold_id: int, amount: int | None = None, agent_run_id: Any = None) -> LedgerResult:
    """Turn a pending hold into one `charge` row of `amount` (default: all of it); any
    remainder is released. A hold is captured at most once (`HoldNotPending`)."""
    wallet, locked = _lock_pending_hold(hold_id)
    if locked.expires_at <= timezone.now():
        raise HoldExpired(f"Hold {hold_id} expired at {locked.expires_at.isoformat()}; its credits are released.")
    amount = locked.amount if amount is None else _require_positive(amount, limit=locked.amount)
    row = _post(
        wallet=wallet,
        kind=TransactionKind.CHARGE,
        amount=-amount,
        held_delta=-locked.amount,
        agent_id=locked.agent_id,
        agent_run_id=agent_run_id,
        hold=locked,
    )
    locked.status = HoldStatus.CAPTURED
    locked.settled_at = timezone.now()
    locked.save(update_fields=["status", "settled_at"])
    _after_charge(wallet.user_id, amount, locked.agent_id)
    return LedgerResult(row)


@_money_verb
def release(*, hold_id: int, status: str = HoldStatus.RELEASED) -> CreditHold:
    """Give a pending hold's credits back to the available balance; the balance is unchanged."""
    if status not in (HoldStatus.RELEASED, HoldStatus.EXPIRED):
        raise ValueError("A hold is released or expired.")
    wallet, locked = _lock_pending_hold(hold_id)
    Wallet.objects.filter(pk=wallet.pk).update(
        held_credits=wallet.held_credits - locked.amount, updated_at=timezone.now()
    )
    locked.status = status
    locked.settled_at = timezone.now()
    locked.save(update_fields=["status", "settled_at"])
    return locked


@_money_verb
def purchase(
    *,
    user_id: int,
    amount: int,
    checkout_session_id: str,
    payment_intent_id: str | None,
    stripe_event_id: str,
    package_id: str,
) -> LedgerResult:
    """Credit a paid Checkout Session. Exactly once per session: the row's idempotency key is
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
    )
    _log_after_commit("[Billing] Granted %s credits to user %s", amount, user_id)
    _count_after_commit(TransactionKind.PURCHASE, amount)
    return LedgerResult(row)


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
    """Take back up to `amount` credits after a refund or dispute, never below zero and never
    from credits held for running work. What cannot be taken is recorded as a shortfall on
    the wallet, which then refuses charges until staff settle it. Idempotent on the key."""
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
    taken = min(amount, max(wallet.available_credits, 0))
    shortfall = amount - taken
    row = None
    if taken:
        row = _post(
            wallet=wallet,
            kind=TransactionKind.CLAWBACK,
            amount=-taken,
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
def settle_shortfall(*, user_id: int, actor_id: int, reason: str) -> ClawbackResult:
    """Staff settle a wallet's shortfall: collect what the available balance now covers (one
    `clawback` row) and write off the rest; the wallet may be charged again afterwards."""
    if not reason or not reason.strip():
        raise InvalidLedgerRequest("A reason is required.")
    wallet = _lock_wallet(user_id)
    open_shortfalls = list(CreditShortfall.objects.filter(wallet=wallet, settled_at__isnull=True).order_by("id"))
    owed = wallet.shortfall_credits
    collect = min(owed, max(wallet.available_credits, 0))
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
    remaining_to_collect = collect
    now = timezone.now()
    for item in open_shortfalls:
        collected = min(item.amount, remaining_to_collect)
        remaining_to_collect -= collected
        item.collected_credits = collected
        item.written_off_credits = item.amount - collected
        item.settled_at = now
        item.settled_by_id = actor_id
        item.settlement_reason = reason.strip()
        item.save(
            update_fields=[
                "collected_credits",
                "written_off_credits",
                "settled_at",
                "settled_by",
                "settlement_reason",
            ]
        )
    Wallet.objects.filter(pk=wallet.pk).update(shortfall_credits=0, updated_at=now)
    if collect:
        _count_after_commit(TransactionKind.CLAWBACK, collect)
    return ClawbackResult(row, clawed_back=collect, shortfall=owed - collect)
