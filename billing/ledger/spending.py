"""Credits going out for work: charge, and hold → capture / release (the agent-run path).

Each is one plan of statements (`billing.ledger.sql`), one round trip on MariaDB."""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import metrics
from billing.ledger import caps, lots, thresholds
from billing.ledger.errors import HoldExpired, HoldNotPending, InvalidAmount, LedgerBusy, LedgerInconsistent
from billing.ledger.posting import (
    _as_first_call,
    _charge_fingerprint,
    _count_after_commit,
    _explain_refusal,
    _fingerprint,
    _is_duplicate_key,
    _key_of_call,
    _loaded_row,
    _log_after_commit,
    _replay_for_user,
    _require_positive,
    _uuid_hex,
)
from billing.ledger.results import Captured, HoldResult, LedgerResult
from billing.ledger.retry import run_replayable
from billing.ledger.sql import Branch, Followup, PlanStopped, Step, bind, remember_inserted_id, run_plan, vendor
from billing.models import CreditHold, CreditTransaction, HoldStatus, TransactionKind
from billing.signals import hold_expired

T = TypeVar("T")


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
    wallet yet); a reused idempotency key replays the first row. Idempotent on the key; a call
    without one gets its own (`_key_of_call`), so a lost answer is run again without charging twice."""
    _require_positive(amount)
    fields = {
        "kind": TransactionKind.CHARGE,
        "amount": -amount,
        "agent_id": agent_id,
        "agent_run_id": agent_run_id,
        "request_fingerprint": _charge_fingerprint(amount, agent_id),
        "metadata": metadata or {},
    }
    with metrics.timed("charge"):
        result = _once_per_call(
            idempotency_key, lambda key: _charge_once(user_id=user_id, fields={**fields, "idempotency_key": key})
        )
    if not result.replayed:
        _after_charge(user_id, amount, agent_id)
    return result


def _once_per_call(idempotency_key: str | None, attempt: Callable[[str], T]) -> T:
    """Run `attempt(key)` — a charge or hold written under `key` — with `run_replayable`: under
    the caller's key, or one of the call's own, so that a lost answer is run again safely; a
    replay of the call's own first run is answered as its first answer."""
    key = _key_of_call(idempotency_key)
    result, answer_lost = run_replayable(lambda _answer_lost: attempt(key))
    return _as_first_call(result, idempotency_key, answer_lost=answer_lost)


def _after_charge(user_id: int, amount: int, agent_id: str) -> None:
    _log_after_commit("[Billing] Charged %s credits from user %s for agent %s", amount, user_id, agent_id)
    _count_after_commit(TransactionKind.CHARGE, amount, agent_id)


_TXN_COLUMNS = ("kind", "amount", "agent_id", "agent_run_id", "idempotency_key", "request_fingerprint", "metadata")


def _charge_plan(*, user_id: int, fields: dict[str, Any], at: Any, now: datetime | None = None) -> list[Step | Branch]:
    amount = -fields["amount"]
    now = now or timezone.now()
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
    remember, row = remember_inserted_id("ledger_row", "credit_transactions")
    debit_sql, insert_sql, returning_sql = _charge_sql(vendor() == "mysql", settings.BALANCE_LOW_THRESHOLD_CREDITS)
    if returning_sql is None:  # SQLite: the row's wallet and balance read by the INSERT itself
        set_params, where_params = caps.debit_params(now, amount)
        debit = Step(debit_sql, [amount, at, *set_params, user_id, amount, *where_params])
        insert = Step(insert_sql, [at, *values, user_id], must_change_one_row=False, returns=True)
        return [debit, insert, *remember, *lots.draw_steps(wallet=_wallet_of_charge(), row=row, amount=amount)]
    return [
        _taking_values(amount, now),
        Step(debit_sql, [at, user_id]),
        Step(insert_sql, [at, *values]),
        *remember,
        Step(returning_sql.format(row=row), must_change_one_row=False, returns=True),
        *lots.draw_steps(wallet=_wallet_of_charge(), row=row, amount=amount, bound="@ledger_take"),
    ]


@functools.cache
def _taking_sql(mariadb: bool, low_balance_default: int, *, held: bool) -> str:
    """The conditional UPDATE of the wallet that takes available credits — from its balance (a
    charge) or into `held_credits` (a hold, `held`) — if they are there and the caps allow it.
    Written once per value of the default low-balance threshold (`low_balance_default`, the
    cache's key: the crossing test writes it into the SQL).

    On MariaDB the amount and the caps' day and month are variables the plan's first statement
    sets (`_taking_values`), and the UPDATE keeps, for the one row it may change (assigned in its
    SET and as the last terms of its WHERE), the wallet's id, the new balance (a charge) and
    whether it crossed a balance threshold (`thresholds.crossing_sql` over the credits it
    leaves: the plan's follow-up condition, with no second read of the wallet). Its parameters:
    the time, the user. Elsewhere every value is a parameter (`caps.debit_params`).

    Each kept variable is assigned from a column of the row, as the last terms of a WHERE that finds
    at most that one row (by its unique user): MariaDB evaluates such a term only for a row every
    earlier term matched. A term reading no column would be evaluated even when no row matches."""
    take = "@ledger_take" if mariadb else "%s"
    caps_set, caps_where = caps.debit_sql(*(("@ledger_take", "@ledger_day", "@ledger_month") if mariadb else ()))
    if held:
        change = f"held_credits = held_credits + {take}"
    elif mariadb:
        change = f"balance_credits = (@ledger_balance := balance_credits - {take})"
    else:
        change = f"balance_credits = balance_credits - {take}"
    keep = (
        " AND (@ledger_wallet := id) IS NOT NULL AND (@ledger_due := "
        f"{thresholds.crossing_sql('balance_credits - held_credits - @ledger_take', debit=True)}) IS NOT NULL"
        if mariadb
        else ""
    )
    return (
        f"UPDATE credit_wallets SET {change}, updated_at = %s, {caps_set} "
        f"WHERE user_id = %s AND shortfall_credits = 0 AND balance_credits - held_credits >= {take} AND {caps_where}"
        f"{keep}"
    )


def _taking_values(amount: int, now: datetime) -> Step:
    """MariaDB: the first statement of a charge's or hold's plan — the values its taking UPDATE
    reads (`_taking_sql`), once each, and what it keeps cleared: not the previous call's, so that
    an UPDATE that did not set them fails the plan rather than writing into another wallet."""
    return Step(
        "SET @ledger_wallet = NULL, @ledger_balance = NULL, @ledger_due = NULL, "
        "@ledger_take = %s, @ledger_day = %s, @ledger_month = %s",
        [amount, *caps.period_params(now)],
        must_change_one_row=False,
    )


def _taking_followup(wallet: str) -> Followup:
    """A charge's or hold's follow-up: on MariaDB due by the variable its UPDATE set (`_taking_sql`)."""
    return thresholds.followup(wallet, debit=True, due="@ledger_due" if vendor() == "mysql" else None)


@functools.cache
def _charge_sql(mariadb: bool, low_balance_default: int) -> tuple[str, str, str | None]:
    """The charge's statements, written once (per value of the default low-balance threshold,
    which the debit's crossing test writes into its SQL): the debit, the row's INSERT, and
    (MariaDB) what hands back the row's id, wallet and balance.

    On MariaDB the debit (`_taking_sql`) keeps the wallet's id and new balance in variables of
    the plan; the row is inserted with VALUES, and handed back from those variables — where an
    INSERT … SELECT would read the wallet again and take the ledger table's AUTO-INC lock for its
    whole statement (innodb_autoinc_lock_mode=1, the default), which every other wallet's charge
    then waits for. Elsewhere: INSERT … SELECT … RETURNING."""
    debit = _taking_sql(mariadb, low_balance_default, held=False)
    columns = f"wallet_id, balance_after, created_at, reason, {', '.join(_TXN_COLUMNS)}"
    placeholders = ", ".join(["%s"] * len(_TXN_COLUMNS))
    if not mariadb:
        insert = (
            f"INSERT INTO credit_transactions ({columns}) SELECT id, balance_credits, %s, '', {placeholders} "
            "FROM credit_wallets WHERE user_id = %s RETURNING id, wallet_id, balance_after"
        )
        return debit, insert, None
    return (
        debit,
        f"INSERT INTO credit_transactions ({columns}) VALUES (@ledger_wallet, @ledger_balance, %s, '', {placeholders})",
        "SELECT {row}, @ledger_wallet, @ledger_balance",
    )


def _wallet_of_charge() -> str:
    """SQL for the wallet a charge's plan debits, for its later steps and its follow-up: on
    MariaDB the variable its debit keeps (`_charge_sql`), elsewhere read from the row it wrote."""
    if vendor() == "mysql":
        return "@ledger_wallet"
    return _wallet_of_row(remember_inserted_id("ledger_row", "credit_transactions")[1])


def _wallet_of_row(row: str) -> str:
    """The wallet of the ledger row `row` (SQL: the id the plan remembered) — the same SQL for
    every call, as a stored plan needs (`run_plan(stored=True)`), where the user's id would not be."""
    return f"(SELECT wallet_id FROM credit_transactions WHERE id = {row})"


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
        plan=lambda now: _charge_plan(
            user_id=user_id, fields=fields, at=db.ops.adapt_datetimefield_value(now), now=now
        ),
        followup=_taking_followup(_wallet_of_charge()),
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
    followup: Followup,
    done: Callable[[list[tuple], datetime], T],
    replayed: Callable[[Any], T],
    then_steps: int = 0,
) -> T:
    """Run a plan whose first checked step takes `amount` available credits (a debit or a hold;
    only unchecked statements, such as resetting variables, may come before it), with
    `followup` (`thresholds.followup` of its wallet). The plan runs stored
    (`run_plan(stored=True)`): its SQL must be the same for every call, every value a parameter.

    The rule lives in that step's WHERE clause; when it takes nothing, the refusal is explained
    afterwards from a read — or the first result under the same idempotency key is replayed.
    A plan that stopped in one of the caller's statements (the last `then_steps`) re-raises
    `PlanStopped`; one whose lots did not cover the amount raises `LedgerInconsistent`."""
    for _ in range(3):
        now = timezone.now()
        steps = plan(now)
        try:
            rows = run_plan(steps, followup, stored=True)
        except PlanStopped as stopped:
            if stopped.step >= len(steps) - then_steps:
                raise  # one of the caller's statements refused: nothing was taken
            taking = next(index for index, step in enumerate(steps) if step.must_change_one_row)
            if stopped.step > taking:
                raise LedgerInconsistent(
                    f"The lots of user {user_id}'s wallet do not cover {amount} credits."
                ) from None
            if existing := _replay_for_user(model, user_id, key, fingerprint):
                return replayed(existing)
            _explain_refusal(user_id=user_id, amount=amount)
            continue  # the wallet was just created, or credits arrived meanwhile: try again
        except IntegrityError as exc:
            if key and _is_duplicate_key(exc) and (existing := _replay_for_user(model, user_id, key, fingerprint)):
                return replayed(existing)
            raise
        returned = sum(step.returns for step in steps)
        thresholds.queue_started_recharge(rows[returned:])
        return done(rows[:returned], now)
    raise LedgerBusy("The wallet changed while the request was checked; retry the request.")


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
    return _once_per_call(
        idempotency_key,
        lambda key: _hold_once(
            user_id=user_id,
            amount=amount,
            agent_id=agent_id,
            key=key,
            fingerprint=fingerprint,
            expires_at=expires_at,
            agent_run_id=agent_run_id,
            then=then or [],
        ),
    )


def _hold_once(*, user_id, amount, agent_id, key, fingerprint, expires_at, agent_run_id, then) -> HoldResult:
    db = transaction.get_connection()

    remember, hold_ref = remember_inserted_id("ledger_hold", "credit_holds")
    mariadb = vendor() == "mysql"
    columns = (
        "wallet_id, amount, status, agent_id, idempotency_key, request_fingerprint, expires_at, created_at, "
        "settled_at, agent_run_id"
    )

    def plan(now: datetime) -> list[Step]:
        at = db.ops.adapt_datetimefield_value(now)
        values = [
            HoldStatus.PENDING.value,
            agent_id,
            key,
            fingerprint,
            db.ops.adapt_datetimefield_value(expires_at or now + settings.BILLING_HOLD_TTL),
            at,
            _uuid_hex(agent_run_id),
        ]
        taking = _taking_sql(mariadb, settings.BALANCE_LOW_THRESHOLD_CREDITS, held=True)
        if not mariadb:  # SQLite: the hold's wallet read by its INSERT
            set_params, where_params = caps.debit_params(now, amount)
            return [
                Step(taking, [amount, at, *set_params, user_id, amount, *where_params]),
                Step(
                    f"INSERT INTO credit_holds ({columns}) SELECT id, %s, %s, %s, %s, %s, %s, %s, NULL, %s "
                    "FROM credit_wallets WHERE user_id = %s RETURNING id, wallet_id",
                    [amount, *values, user_id],
                    must_change_one_row=False,
                    returns=True,
                ),
                *remember,
                *lots.pin_steps(wallet=_wallet_of_hold(hold_ref), hold=hold_ref, amount=amount),
                *then,
            ]
        # MariaDB: as a charge's (`_charge_plan`), the hold's row by VALUES from what the UPDATE kept.
        return [
            _taking_values(amount, now),
            Step(taking, [at, user_id]),
            Step(
                f"INSERT INTO credit_holds ({columns}) VALUES (@ledger_wallet, @ledger_take, %s, %s, %s, %s, %s, %s, "
                "NULL, %s)",
                values,
            ),
            *remember,
            Step(f"SELECT {hold_ref}, @ledger_wallet", must_change_one_row=False, returns=True),
            *lots.pin_steps(wallet="@ledger_wallet", hold=hold_ref, amount=amount, bound="@ledger_take"),
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
        followup=_taking_followup("@ledger_wallet" if mariadb else _wallet_of_hold(hold_ref)),
        done=held,
        replayed=lambda existing: HoldResult(existing, replayed=True),
        then_steps=len(then),
    )


def _give_back(
    hold: str, amount: str | None, *, captured: bool = True, held: str | None = None, held_at: str | None = None
) -> str:
    """The SET clause returning a settled hold's unused credits to its period's spend counters:
    all of them on release, what a capture leaves (`amount` of the hold's; None: all taken).
    `hold` and `amount` are SQL (a bound variable: `bind`); so are the hold's amount and time
    (`held`, `held_at`: read from the hold unless given)."""
    held = held or f"(SELECT amount FROM credit_holds WHERE id = {hold})"
    held_at = held_at or f"(SELECT created_at FROM credit_holds WHERE id = {hold})"
    if not captured:
        unused = held
    elif amount is None:
        unused = "0"
    else:
        unused = f"({held} - {amount})"
    return caps.give_back_sql(held_at=held_at, unused=unused)


def _wallet_of_hold(hold: str) -> str:
    """The wallet of the hold `hold` (SQL for its id: a bound variable, the id the plan remembered)."""
    return f"(SELECT wallet_id FROM credit_holds WHERE id = {hold})"


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
    committed with the charge (the run's receipt), and only with it. The charge row carries a key
    of the call's own (`call:…`), so after a lost answer the capture is run again: a hold found
    captured by a row under that key is this call's first run, answered with that row; captured
    by another call, it is `HoldNotPending` as ever."""
    if amount is not None:
        _require_positive(amount)
    key = _key_of_call(None)
    with metrics.timed("capture"):
        result, _ = run_replayable(
            lambda answer_lost: _capture_once(
                hold_id=hold_id,
                amount=amount,
                agent_run_id=agent_run_id,
                then=then or [],
                key=key,
                answer_lost=answer_lost,
            )
        )
    _after_charge(result.user_id, -result.transaction.amount, result.transaction.agent_id)
    return result


def _capture_once(
    *, hold_id: int, amount: int | None, agent_run_id: Any, then: list[Step], key: str, answer_lost: bool
) -> Captured:
    db = transaction.get_connection()
    now = timezone.now()
    at = db.ops.adapt_datetimefield_value(now)
    # The hold and the amount as variables of the plan: its SQL is the same for every hold (stored).
    bound, hold = bind("ledger_hold", hold_id)
    if amount is not None:
        bound_amount, amount_ref = bind("ledger_amount", amount)
        bound += bound_amount
    else:
        amount_ref = None
    row = dict(at=at, agent_run_id=_uuid_hex(agent_run_id), key=key)
    if vendor() == "mysql":
        steps, wallet = _capture_steps_kept(hold=hold, amount=amount, amount_ref=amount_ref, **row)
    else:
        steps, wallet = _capture_steps_read(hold_id=hold_id, hold=hold, amount=amount, amount_ref=amount_ref, **row)
    plan = [*bound, *steps, *then]
    # Before the ledger row: the wallet locked, the hold settled, the wallet changed; from it on, the
    # row and the lots (a stop there means the lots do not cover the capture).
    lots_from = len(bound) + next(
        index for index, step in enumerate(steps) if step.sql.startswith("INSERT INTO credit_transactions")
    )
    try:
        rows = run_plan(plan, thresholds.followup(wallet, debit=False), stored=True)
    except PlanStopped as stopped:
        if stopped.step >= len(plan) - len(then):
            raise  # one of the caller's statements refused: nothing was captured
        if stopped.step >= lots_from:  # past the wallet, the hold and the balance: the lots
            raise LedgerInconsistent(f"The lots pinned by hold {hold_id} do not cover its capture.") from None
        if answer_lost and (earlier := _captured_earlier(hold_id, key)) is not None:
            return earlier
        _explain_unsettled(hold_id, amount=amount)
        raise
    returned = rows[: sum(step.returns for step in steps)]  # the caller's steps' rows come after
    row_id, wallet_id, charged, balance_after, agent_id, user_id = (column for kept in returned for column in kept)
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
        idempotency_key=key,
        created_at=now,
    )
    return Captured(row, user_id=user_id)


_CAPTURE_COLUMNS = (
    "wallet_id, balance_after, created_at, reason, kind, amount, agent_id, agent_run_id, hold_id, idempotency_key, "
    "request_fingerprint, metadata"
)


def _capture_steps_kept(
    *, hold: str, amount: int | None, amount_ref: str | None, at: Any, agent_run_id: str | None, key: str
) -> tuple[list[Step], str]:
    """MariaDB: a capture's steps (after the bound hold and amount) and SQL for its wallet. As a
    charge's (`_charge_plan`), each statement keeps what the next ones need in variables — the
    wallet's id and user when it is locked, the hold's amount, agent and time when it is
    settled, the new balance when it is charged — so that the ledger row is inserted with
    VALUES and handed back from them, with no further read of the hold or the wallet (and no
    INSERT … SELECT holding the ledger table's AUTO-INC lock for its statement). Returns one
    row: the ledger row's id, wallet, amount, balance after, agent, and the wallet's user.

    Each kept variable is assigned from a column of the row, as the last terms of a WHERE that
    finds at most that one row: MariaDB evaluates such a term only for a row every earlier term
    matched. (A term reading no column, `(@x := @y) IS NOT NULL`, would be evaluated even when no
    row matches: never keep one that way.)"""
    charged = amount_ref or "@hold_amount"
    steps = [
        # Not the previous call's: a statement that did not set them fails the plan on them.
        Step(
            "SET @ledger_wallet = NULL, @ledger_user = NULL, @ledger_balance = NULL, @ledger_charged = NULL, "
            "@hold_amount = NULL, @hold_agent = NULL, @hold_at = NULL",
            must_change_one_row=False,
        ),
        # Lock order: the wallet first, then the hold (every verb, `expire_holds` too).
        Step(
            f"UPDATE credit_wallets SET updated_at = %s WHERE id = {_wallet_of_hold(hold)} "
            "AND (@ledger_wallet := id) IS NOT NULL AND (@ledger_user := user_id) IS NOT NULL",
            [at],
        ),
        Step(
            f"UPDATE credit_holds SET status = %s, settled_at = %s WHERE id = {hold} AND status = %s "
            "AND expires_at > %s AND amount >= %s AND (@hold_amount := amount) IS NOT NULL "
            "AND ((@hold_agent := agent_id) IS NOT NULL OR agent_id IS NULL) AND (@hold_at := created_at) IS NOT NULL",
            [HoldStatus.CAPTURED.value, at, HoldStatus.PENDING.value, at, amount or 0],
        ),
        Step(
            f"UPDATE credit_wallets SET balance_credits = (@ledger_balance := balance_credits - {charged}), "
            f"held_credits = held_credits - @hold_amount, "
            f"{_give_back(hold, amount_ref, held='@hold_amount', held_at='@hold_at')} WHERE id = @ledger_wallet"
        ),
        Step(
            f"INSERT INTO credit_transactions ({_CAPTURE_COLUMNS}) VALUES (@ledger_wallet, @ledger_balance, %s, '', "
            f"%s, (@ledger_charged := -{charged}), @hold_agent, %s, {hold}, %s, '', '{{}}')",
            [at, TransactionKind.CHARGE.value, agent_run_id, key],
        ),
    ]
    remember, row = remember_inserted_id("ledger_row", "credit_transactions")
    steps += [
        *remember,
        *lots.capture_steps(hold=hold, row=row, amount=charged),
        Step(
            f"SELECT {row}, @ledger_wallet, @ledger_charged, @ledger_balance, @hold_agent, @ledger_user",
            must_change_one_row=False,
            returns=True,
        ),
    ]
    return steps, "@ledger_wallet"


def _capture_steps_read(
    *, hold_id: int, hold: str, amount: int | None, amount_ref: str | None, at: Any, agent_run_id: str | None, key: str
) -> tuple[list[Step], str]:
    """Elsewhere (SQLite): a capture's steps, each reading the hold and the wallet it needs.
    Returns two rows: the ledger row's id, wallet, amount, balance after and agent; the user."""
    hold_amount = "(SELECT amount FROM credit_holds WHERE id = %s)"
    remember, row = remember_inserted_id("ledger_row", "credit_transactions")
    return [
        _lock_wallet_of_hold(hold_id, at),
        Step(
            "UPDATE credit_holds SET status = %s, settled_at = %s "
            "WHERE id = %s AND status = %s AND expires_at > %s AND amount >= %s",
            [HoldStatus.CAPTURED.value, at, hold_id, HoldStatus.PENDING.value, at, amount or 0],
        ),
        Step(
            f"UPDATE credit_wallets SET balance_credits = balance_credits - COALESCE(%s, {hold_amount}), "
            f"held_credits = held_credits - {hold_amount}, {_give_back(hold, amount_ref)} "
            "WHERE id = (SELECT wallet_id FROM credit_holds WHERE id = %s)",
            [amount, hold_id, hold_id, hold_id],
        ),
        Step(
            f"INSERT INTO credit_transactions ({_CAPTURE_COLUMNS}) "
            "SELECT w.id, w.balance_credits, %s, '', %s, -COALESCE(%s, h.amount), h.agent_id, %s, h.id, %s, '', '{}' "
            "FROM credit_holds h JOIN credit_wallets w ON w.id = h.wallet_id WHERE h.id = %s "
            "RETURNING id, wallet_id, amount, balance_after, agent_id",
            [at, TransactionKind.CHARGE.value, amount, agent_run_id, key, hold_id],
            must_change_one_row=False,
            returns=True,
        ),
        *remember,
        *lots.capture_steps(hold=hold, row=row, amount=amount_ref),
        Step(
            "SELECT user_id FROM credit_wallets WHERE id = (SELECT wallet_id FROM credit_holds WHERE id = %s)",
            [hold_id],
            must_change_one_row=False,
            returns=True,
        ),
    ], _wallet_of_hold(hold)


def _captured_earlier(hold_id: int, key: str) -> Captured | None:
    """The capture of `hold_id` this call (`key`) already committed, if any."""
    row = (
        CreditTransaction.objects.filter(hold_id=hold_id, kind=TransactionKind.CHARGE, idempotency_key=key)
        .select_related("wallet")
        .first()
    )
    return None if row is None else Captured(row, user_id=row.wallet.user_id)


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
    `then` are statements committed with the release (the run's end), and only with it. After a
    lost answer the release is run again, and a hold found settled with `status` is answered as
    this call's release (a release moves no credits and writes no row to tell calls apart by: a
    second release sent meanwhile is answered the same)."""
    if status not in (HoldStatus.RELEASED, HoldStatus.EXPIRED):
        raise ValueError("A hold is released or expired.")
    run_replayable(
        lambda answer_lost: _release_once(hold_id=hold_id, status=status, then=then or [], answer_lost=answer_lost)
    )
    return CreditHold.objects.get(pk=hold_id)


def _release_once(*, hold_id: int, status: str, then: list[Step], answer_lost: bool) -> None:
    db = transaction.get_connection()
    at = db.ops.adapt_datetimefield_value(timezone.now())
    bound, hold = bind("ledger_hold", hold_id)  # the plan's SQL the same for every hold (stored)
    plan = [
        *bound,
        _lock_wallet_of_hold(hold_id, at),
        Step(
            "UPDATE credit_holds SET status = %s, settled_at = %s WHERE id = %s AND status = %s",
            [str(status), at, hold_id, HoldStatus.PENDING.value],
        ),
        Step(
            "UPDATE credit_wallets SET held_credits = held_credits - (SELECT amount FROM credit_holds WHERE id = %s), "
            f"{_give_back(hold, None, captured=False)} "
            "WHERE id = (SELECT wallet_id FROM credit_holds WHERE id = %s)",
            [hold_id, hold_id],
        ),
        lots.unpin_step(hold=hold),
        *then,
    ]
    try:
        run_plan(plan, thresholds.followup(_wallet_of_hold(hold), debit=False), stored=True)
    except PlanStopped as stopped:
        if stopped.step >= len(plan) - len(then):
            raise
        if answer_lost and CreditHold.objects.filter(pk=hold_id, status=status).exists():
            return
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
