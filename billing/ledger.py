"""The only code that changes wallet balances.

Every verb here:
- runs in one database transaction and locks the wallet row before it reads or changes the
  balance — charge, hold, capture and release by a conditional UPDATE inside their one plan
  of statements (`billing.sql`: one round trip on MariaDB), the rarer verbs by
  `SELECT … FOR UPDATE` — so concurrent calls on one wallet serialise and no update is lost;
- writes exactly one immutable `CreditTransaction` carrying `balance_after` for every
  change of the balance (holds move `held_credits` only and write a `CreditHold`);
- is idempotent on its `idempotency_key`: the same key replays the first result, the
  same key with different parameters raises `IdempotencyConflict`;
- retries lock-wait timeouts and deadlocks itself when it owns the transaction, and
  raises `LedgerBusy` (retryable, never a 500) if they persist or the connection is lost.

One lock order everywhere: wallet → hold → agent run (→ shortfalls for claw-backs). Holds
are settled by `capture`/`release`/`expire_hold`, which lock the wallet first, then the
hold; an agent run's row is written by statements (`then=`) committed in the same plan,
after both, and `expire_holds` ends a run through the `hold_expired` signal inside the
release's transaction. A running job's lease (`extend_hold`) locks its hold alone. No verb
locks two wallets.
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
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing import metrics
from billing.models import CreditHold, CreditShortfall, CreditTransaction, HoldStatus, TransactionKind, Wallet
from billing.signals import hold_expired
from billing.sql import PlanStopped, Step, is_connection_error, run_plan
from core.errors import DomainError

logger = logging.getLogger("billing")

# MySQL/MariaDB error numbers worth retrying: lock wait timeout, deadlock.
_RETRYABLE_MYSQL_ERRORS = {1205, 1213}
_MAX_ATTEMPTS = 5


class LedgerError(DomainError):
    """A refusal the caller can explain to the user (`core.errors` answers it over HTTP)."""

    error_code = "LEDGER_ERROR"


class InsufficientCredits(LedgerError):
    error_code = "BILLING_INSUFFICIENT_CREDITS"

    def __init__(self, *, required: int, available: int):
        super().__init__(f"This needs {required} credits but only {available} are available.")
        self.required = required
        self.available = available

    def extra(self) -> dict[str, Any]:
        return {"required": self.required, "available": self.available}


class WalletInShortfall(LedgerError):
    """A refund or dispute took back credits the wallet no longer had; staff must settle it first."""

    error_code = "BILLING_WALLET_IN_SHORTFALL"

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


class HoldNotPending(LedgerError):
    error_code = "HOLD_NOT_PENDING"


class HoldExpired(HoldNotPending):
    error_code = "HOLD_EXPIRED"


class LedgerBusy(LedgerError):
    error_code = "LEDGER_BUSY"


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
    still_owed: int = 0


@dataclass(frozen=True)
class HoldResult:
    hold: CreditHold
    replayed: bool = False


T = TypeVar("T")


def is_retryable_error(exc: Exception) -> bool:
    """A lock-wait timeout or deadlock: the whole transaction may simply be run again. Inside a
    caller's transaction a verb reports one as `LedgerBusy` caused by it, for the caller (who
    owns the transaction) to retry."""
    while isinstance(exc, LedgerBusy):
        exc = exc.__cause__
    return isinstance(exc, OperationalError) and bool(exc.args) and exc.args[0] in _RETRYABLE_MYSQL_ERRORS


def run_with_retries(attempt: Callable[[], T]) -> T:
    """Run one whole transaction, `attempt()`, again after a lock-wait timeout or deadlock when
    we own the transaction (also one a ledger verb inside it reported as `LedgerBusy`), within
    LEDGER_RETRY_BUDGET_SECONDS; `LedgerBusy` (retryable, never a 500) if they persist or the
    connection was lost. Every money verb runs through it, and so do callers (webhooks) whose
    transaction holds several verbs."""
    give_up_at = time.monotonic() + settings.LEDGER_RETRY_BUDGET_SECONDS
    for number in range(1, _MAX_ATTEMPTS + 1):
        try:
            return attempt()
        except (OperationalError, InterfaceError, LedgerBusy) as exc:
            if isinstance(exc, LedgerBusy) and not is_retryable_error(exc):
                raise
            if is_connection_error(exc):
                if not connection.in_atomic_block:
                    with contextlib.suppress(DatabaseError):
                        connection.close()
                raise LedgerBusy("The database connection was interrupted; retry the request.") from exc
            if not is_retryable_error(exc):
                raise
            if connection.in_atomic_block:
                # An outer transaction owns the locks; only its owner can retry.
                raise LedgerBusy("The wallet is busy; retry the request.") from exc
            # Another full lock wait must still fit in the budget.
            if number == _MAX_ATTEMPTS or time.monotonic() + settings.LEDGER_LOCK_WAIT_SECONDS > give_up_at:
                raise LedgerBusy("The wallet is busy; retry the request.") from exc
            time.sleep(random.uniform(0, 0.02 * number))
    raise AssertionError("unreachable")


def _money_verb(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` in its own transaction (a savepoint inside a caller's), with `run_with_retries`."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> T:
        def attempt() -> T:
            with transaction.atomic():
                return fn(**kwargs)

        return run_with_retries(attempt)

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


def check_staff_amount(amount: Any) -> int:
    """A staff grant (> 0) or debit (< 0): a non-zero whole number of credits, |amount| at most
    `BILLING_MAX_GRANT`; otherwise `InvalidAmount`. The API, the admin and approvals check with this."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
        raise InvalidAmount("The amount must be a non-zero whole number of credits.")
    _require_positive(abs(amount), limit=settings.BILLING_MAX_GRANT)
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
    check_staff_amount(amount)
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

    One plan (`_charge_plan`): the conditional debit and the ledger row, one round trip on
    MariaDB. A refusal is explained afterwards from a read (too few credits, a shortfall, no
    wallet yet); a reused idempotency key replays the first row. Idempotent on the key."""
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
        result = run_with_retries(lambda: _charge_once(user_id=user_id, fields=fields))
    if not result.replayed:
        _after_charge(user_id, amount, agent_id)
    return result


def _after_charge(user_id: int, amount: int, agent_id: str) -> None:
    _log_after_commit("[Billing] Charged %s credits from user %s for agent %s", amount, user_id, agent_id)
    _count_after_commit(TransactionKind.CHARGE, amount, agent_id)


_TXN_COLUMNS = ("kind", "amount", "agent_id", "agent_run_id", "idempotency_key", "request_fingerprint", "metadata")


def _charge_plan(*, user_id: int, fields: dict[str, Any], at: Any) -> list[Step]:
    amount = -fields["amount"]
    run_id = fields["agent_run_id"]
    values = [
        str(fields["kind"]),
        fields["amount"],
        fields["agent_id"],
        _uuid_hex(run_id),
        fields["idempotency_key"],
        fields["request_fingerprint"],
        json.dumps(fields["metadata"]),
    ]
    return [
        Step(
            "UPDATE credit_wallets SET balance_credits = balance_credits - %s, updated_at = %s "
            "WHERE user_id = %s AND shortfall_credits = 0 AND balance_credits - held_credits >= %s",
            [amount, at, user_id, amount],
        ),
        Step(
            "INSERT INTO credit_transactions (wallet_id, balance_after, created_at, reason, {columns}) "
            "SELECT id, balance_credits, %s, '', {values} FROM credit_wallets WHERE user_id = %s "
            "RETURNING id, wallet_id, balance_after".format(
                columns=", ".join(_TXN_COLUMNS), values=", ".join(["%s"] * len(_TXN_COLUMNS))
            ),
            [at, *values, user_id],
            must_change_one_row=False,
            returns=True,
        ),
    ]


def _charge_once(*, user_id: int, fields: dict[str, Any]) -> LedgerResult:
    db = transaction.get_connection()

    def charged(rows: list[tuple], now: datetime) -> LedgerResult:
        ((row_id, wallet_id, balance_after),) = rows
        return LedgerResult(
            _loaded_row(db.alias, id=row_id, wallet_id=wallet_id, balance_after=balance_after, created_at=now, **fields)
        )

    return _take_available(
        user_id=user_id,
        amount=-fields["amount"],
        model=CreditTransaction,
        key=fields["idempotency_key"],
        fingerprint=fields["request_fingerprint"],
        plan=lambda now: _charge_plan(user_id=user_id, fields=fields, at=db.ops.adapt_datetimefield_value(now)),
        done=charged,
        replayed=lambda existing: LedgerResult(existing, replayed=True),
    )


def _take_available(
    *,
    user_id: int,
    amount: int,
    model,
    key: str | None,
    fingerprint: str,
    plan: Callable[[datetime], list[Step]],
    done: Callable[[list[tuple], datetime], T],
    replayed: Callable[[Any], T],
    own_steps: int = 2,
) -> T:
    """Run a plan whose first step takes `amount` available credits (a debit or a hold).

    The rule lives in that step's WHERE clause; when it takes nothing, the refusal is explained
    afterwards from a read — or the first result under the same idempotency key is replayed.
    A plan that stopped in a caller's statement (past `own_steps`) re-raises `PlanStopped`."""
    for _ in range(3):
        now = timezone.now()
        try:
            rows = run_plan(plan(now))
        except PlanStopped as stopped:
            if stopped.step >= own_steps:
                raise  # one of the caller's statements refused: nothing was taken
            if existing := _replay_for_user(model, user_id, key, fingerprint):
                return replayed(existing)
            _explain_refusal(user_id=user_id, amount=amount)
            continue  # the wallet was just created, or credits arrived meanwhile: try again
        except IntegrityError as exc:
            if key and _is_duplicate_key(exc) and (existing := _replay_for_user(model, user_id, key, fingerprint)):
                return replayed(existing)
            raise
        return done(rows, now)
    raise LedgerBusy("The wallet changed while the request was checked; retry the request.")


def _uuid_hex(value: Any) -> str | None:
    return None if value is None else uuid.UUID(str(value)).hex  # how UUIDField stores it on MySQL and SQLite


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


def hold(
    *,
    user_id: int,
    amount: int,
    agent_id: str,
    idempotency_key: str | None = None,
    expires_at: datetime | None = None,
    agent_run_id: Any = None,
    then: list[Step] | None = None,
) -> HoldResult:
    """Reserve `amount` available credits: `held_credits` grows, the balance does not.

    A hold taken for an agent run carries its `agent_run_id`; only the run settles it. `then`
    are statements committed together with the hold, and only with it (the run's row).
    Idempotent on `idempotency_key`."""
    _require_positive(amount)
    fingerprint = _fingerprint("hold", amount=amount, agent_id=agent_id)
    return run_with_retries(
        lambda: _hold_once(
            user_id=user_id,
            amount=amount,
            agent_id=agent_id,
            key=idempotency_key,
            fingerprint=fingerprint,
            expires_at=expires_at,
            agent_run_id=agent_run_id,
            then=then or [],
        )
    )


def _hold_once(*, user_id, amount, agent_id, key, fingerprint, expires_at, agent_run_id, then) -> HoldResult:
    db = transaction.get_connection()

    def plan(now: datetime) -> list[Step]:
        at = db.ops.adapt_datetimefield_value(now)
        return [
            Step(
                "UPDATE credit_wallets SET held_credits = held_credits + %s, updated_at = %s "
                "WHERE user_id = %s AND shortfall_credits = 0 AND balance_credits - held_credits >= %s",
                [amount, at, user_id, amount],
            ),
            Step(
                "INSERT INTO credit_holds (wallet_id, amount, status, agent_id, idempotency_key, "
                "request_fingerprint, expires_at, created_at, settled_at, agent_run_id) "
                "SELECT id, %s, %s, %s, %s, %s, %s, %s, NULL, %s FROM credit_wallets WHERE user_id = %s "
                "RETURNING id, wallet_id",
                [
                    amount,
                    HoldStatus.PENDING.value,
                    agent_id,
                    key,
                    fingerprint,
                    db.ops.adapt_datetimefield_value(expires_at or now + settings.BILLING_HOLD_TTL),
                    at,
                    _uuid_hex(agent_run_id),
                    user_id,
                ],
                must_change_one_row=False,
                returns=True,
            ),
            *then,
        ]

    def held(rows: list[tuple], now: datetime) -> HoldResult:
        (hold_id, wallet_id), *_ = rows
        created = CreditHold(
            id=hold_id,
            wallet_id=wallet_id,
            amount=amount,
            status=HoldStatus.PENDING,
            agent_id=agent_id,
            idempotency_key=key,
            request_fingerprint=fingerprint,
            expires_at=expires_at or now + settings.BILLING_HOLD_TTL,
            created_at=now,
            agent_run_id=agent_run_id,
        )
        created._state.adding, created._state.db = False, db.alias
        return HoldResult(created)

    return _take_available(
        user_id=user_id,
        amount=amount,
        model=CreditHold,
        key=key,
        fingerprint=fingerprint,
        plan=plan,
        done=held,
        replayed=lambda existing: HoldResult(existing, replayed=True),
    )


def _lock_wallet_of_hold(hold_id: int, at: Any) -> Step:
    # Lock order: the wallet first, then the hold (every verb, `expire_holds` too).
    return Step(
        "UPDATE credit_wallets SET updated_at = %s WHERE id = (SELECT wallet_id FROM credit_holds WHERE id = %s)",
        [at, hold_id],
    )


def capture(
    *,
    hold_id: int,
    amount: int | None = None,
    agent_run_id: Any = None,
    then: list[Step] | None = None,
) -> LedgerResult:
    """Turn a pending hold into one `charge` row of `amount` (default: all of it); any
    remainder is released. A hold is captured at most once (`HoldNotPending`). A hold past its
    expiry is released as `expired` at once and `HoldExpired` raised. `then` are statements
    committed with the charge (the run's receipt), and only with it."""
    if amount is not None:
        _require_positive(amount)
    with metrics.timed("capture"):
        result = run_with_retries(
            lambda: _capture_once(hold_id=hold_id, amount=amount, agent_run_id=agent_run_id, then=then or [])
        )
    _after_charge(result.user_id, -result.transaction.amount, result.transaction.agent_id)
    return result


@dataclass(frozen=True)
class _Captured(LedgerResult):
    user_id: int = 0


def _capture_once(*, hold_id: int, amount: int | None, agent_run_id: Any, then: list[Step]) -> _Captured:
    db = transaction.get_connection()
    now = timezone.now()
    at = db.ops.adapt_datetimefield_value(now)
    hold_amount = "(SELECT amount FROM credit_holds WHERE id = %s)"
    plan = [
        _lock_wallet_of_hold(hold_id, at),
        Step(
            "UPDATE credit_holds SET status = %s, settled_at = %s "
            "WHERE id = %s AND status = %s AND expires_at > %s AND amount >= %s",
            [HoldStatus.CAPTURED.value, at, hold_id, HoldStatus.PENDING.value, at, amount or 0],
        ),
        Step(
            f"UPDATE credit_wallets SET balance_credits = balance_credits - COALESCE(%s, {hold_amount}), "
            f"held_credits = held_credits - {hold_amount} "
            "WHERE id = (SELECT wallet_id FROM credit_holds WHERE id = %s)",
            [amount, hold_id, hold_id, hold_id],
        ),
        Step(
            "INSERT INTO credit_transactions (wallet_id, balance_after, created_at, reason, kind, amount, agent_id, "
            "agent_run_id, hold_id, request_fingerprint, metadata) "
            "SELECT w.id, w.balance_credits, %s, '', %s, -COALESCE(%s, h.amount), h.agent_id, %s, h.id, '', '{}' "
            "FROM credit_holds h JOIN credit_wallets w ON w.id = h.wallet_id WHERE h.id = %s "
            "RETURNING id, wallet_id, amount, balance_after, agent_id",
            [at, TransactionKind.CHARGE.value, amount, _uuid_hex(agent_run_id), hold_id],
            must_change_one_row=False,
            returns=True,
        ),
        Step(
            "SELECT user_id FROM credit_wallets WHERE id = (SELECT wallet_id FROM credit_holds WHERE id = %s)",
            [hold_id],
            must_change_one_row=False,
            returns=True,
        ),
        *then,
    ]
    try:
        (row_id, wallet_id, charged, balance_after, agent_id), (user_id,), *_ = run_plan(plan)
    except PlanStopped as stopped:
        if stopped.step >= len(plan) - len(then):
            raise  # one of the caller's statements refused: nothing was captured
        _explain_unsettled(hold_id, amount=amount)
        raise
    row = _loaded_row(
        db.alias,
        id=row_id,
        wallet_id=wallet_id,
        kind=TransactionKind.CHARGE,
        amount=charged,
        balance_after=balance_after,
        agent_id=agent_id,
        agent_run_id=None if agent_run_id is None else uuid.UUID(str(agent_run_id)),
        hold_id=hold_id,
        created_at=now,
    )
    return _Captured(row, user_id=user_id)


def _explain_unsettled(hold_id: int, *, amount: int | None = None) -> NoReturn:
    """A capture or release plan changed nothing: say why. A pending hold past its expiry is
    released as `expired` here, so its credits never wait for the sweep."""
    found = CreditHold.objects.filter(pk=hold_id).first()
    if found is None:
        raise CreditHold.DoesNotExist(f"No hold {hold_id}.")
    if found.status != HoldStatus.PENDING:
        raise HoldNotPending(f"Hold {hold_id} is already {found.status}.")
    if found.expires_at <= timezone.now():
        with contextlib.suppress(HoldNotPending):
            expire_hold(hold_id=hold_id)
        raise HoldExpired(f"Hold {hold_id} expired at {found.expires_at.isoformat()}; its credits are released.")
    if amount is not None and amount > found.amount:
        raise InvalidAmount(f"The amount may not exceed the {found.amount} credits held.")
    raise LedgerBusy("The hold changed while it was settled; retry the request.")


def release(*, hold_id: int, status: str = HoldStatus.RELEASED, then: list[Step] | None = None) -> CreditHold:
    """Give a pending hold's credits back to the available balance; the balance is unchanged.
    `then` are statements committed with the release (the run's end), and only with it."""
    if status not in (HoldStatus.RELEASED, HoldStatus.EXPIRED):
        raise ValueError("A hold is released or expired.")
    run_with_retries(lambda: _release_once(hold_id=hold_id, status=status, then=then or []))
    return CreditHold.objects.get(pk=hold_id)


def _release_once(*, hold_id: int, status: str, then: list[Step]) -> None:
    db = transaction.get_connection()
    at = db.ops.adapt_datetimefield_value(timezone.now())
    plan = [
        _lock_wallet_of_hold(hold_id, at),
        Step(
            "UPDATE credit_holds SET status = %s, settled_at = %s WHERE id = %s AND status = %s",
            [str(status), at, hold_id, HoldStatus.PENDING.value],
        ),
        Step(
            "UPDATE credit_wallets SET held_credits = held_credits - (SELECT amount FROM credit_holds WHERE id = %s) "
            "WHERE id = (SELECT wallet_id FROM credit_holds WHERE id = %s)",
            [hold_id, hold_id],
        ),
        *then,
    ]
    try:
        run_plan(plan)
    except PlanStopped as stopped:
        if stopped.step >= len(plan) - len(then):
            raise
        _explain_unsettled(hold_id)


def expire_hold(*, hold_id: int) -> CreditHold:
    """Release a pending hold as `expired` and tell `hold_expired`'s listeners (agent runs end
    as `expired`) in the same transaction: wallet → hold → run, the one lock order."""
    with transaction.atomic():
        expired = release(hold_id=hold_id, status=HoldStatus.EXPIRED)
        hold_expired.send(sender=CreditHold, hold=expired)
    return expired


def extend_hold(*, hold_id: int, until: datetime) -> bool:
    """A running job's lease: move a pending hold's expiry to `until`. False
    when the hold is no longer pending. Locks the hold row alone."""
    return CreditHold.objects.filter(pk=hold_id, status=HoldStatus.PENDING).update(expires_at=until) == 1


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


@dataclass(frozen=True)
class RestoreResult:
    transaction: CreditTransaction | None
    restored: int  # credits given back to the balance
    cancelled: int  # credits no longer owed (open shortfall cancelled)


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
