"""Lots and the burn order: which credits a debit takes, written once, as SQL.

Every credit that comes in is a lot (`CreditLot`); every debit takes credits from lots and
records each take as a draw (`CreditDraw`: ledger row → lot → credits); a hold pins credits of
lots (`CreditHoldLot`) that only its capture draws and its release frees.

**The burn order** — which lot a debit or a hold takes from first:
1. lower `priority` first;
2. then the soonest `expires_at`, lots that never expire last;
3. then promotional before paid;
4. then the oldest (lowest id).

A debit takes only a lot's *free* credits (`remaining − held`): credits pinned by a pending hold
belong to that hold's run. The rule lives in `BURN_ORDER` and `_burn_into`, one window over the wallet's open lots,
used by every debit (charge, debit adjustment, claw-back, shortfall collection, expiry) and every
hold; a capture walks its own pins in the same order. On MariaDB a take the first lot in
`BURN_ORDER` covers goes a short way first (`_take_steps`): that lot alone, by the same order.
Statements run inside the verb's plan or transaction, after the wallet row is locked (lock order:
wallet → hold → lots → run).

The general way ends with a check that the draws (or pins) add up to the amount, and the short
way's one change is guarded by the lot's free credits: a plan whose lots disagree with the wallet
stops (nothing kept) instead of writing a row the lots do not back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from billing.ledger.errors import LedgerInconsistent
from billing.ledger.sql import Branch, PlanStopped, Step, bind, run_plan, vendor
from billing.models import CreditLot, CreditTransaction, LotCategory, Wallet

# The burn order as ORDER BY terms over a lot's columns (`{t}`: an optional table prefix).
BURN_ORDER_TERMS = (
    "{t}priority",
    "CASE WHEN {t}expires_at IS NULL THEN 1 ELSE 0 END",
    "{t}expires_at",
    "CASE WHEN {t}category = 'paid' THEN 1 ELSE 0 END",
    "{t}id",
)
BURN_ORDER = ", ".join(BURN_ORDER_TERMS)


@dataclass(frozen=True)
class LotTerms:
    """How the credits of a new lot may be spent, and what was paid for them."""

    category: str = LotCategory.PROMOTIONAL
    expires_at: datetime | None = None
    priority: int = 0
    cost_basis_cents: int = 0
    currency: str = ""
    source: str = ""
    purchase_id: int | None = None
    actor_id: int | None = None


def _int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected an integer, got {value!r}.")
    return value


def _burn_into(*, table: str, owner: str, lot: str, free: str, source: str, order: str, amount: str) -> str:
    """INSERT into `table`, for `owner` (a row or hold id, as SQL), the takes of `amount` from
    the rows of `source` in burn order (`order`): each row's lot (`lot`) gives min(its `free`
    credits, what the rows before it left missing), until the amount is reached.

    What the rows before gave is summed over the rows *before* (a frame ending 1 PRECEDING), not
    as the running total minus the row's own credits: under concurrent holds MariaDB computed
    the running total and the row's value from different versions of the row, and a hold
    pinned 75 credits for 25 (`test_concurrent_holds_on_one_lot_pin_exactly_their_amount`)."""
    column = "transaction_id" if table == "credit_draws" else "hold_id"
    return (
        f"INSERT INTO {table} ({column}, lot_id, credits) SELECT {owner}, id, "
        f"CASE WHEN free < {amount} - earlier THEN free ELSE {amount} - earlier END "
        f"FROM (SELECT {lot} AS id, {free} AS free, "
        f"COALESCE(SUM({free}) OVER (ORDER BY {order} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS earlier "
        f"FROM {source}) ordered WHERE earlier < {amount}"
    )


def _from_open_lots(*, table: str, owner: str, wallet: str, amount: str, only_lot_ids=None) -> Step:
    """Take `amount` free credits of the wallet's lots (of `only_lot_ids`, if given)."""
    source = f"credit_lots WHERE wallet_id = {wallet} AND is_open = 1 AND remaining_credits > held_credits"
    if only_lot_ids is not None:
        source += f" AND id IN ({', '.join(str(_int(i)) for i in only_lot_ids) or 'NULL'})"
    sql = _burn_into(
        table=table,
        owner=owner,
        lot="id",
        free="remaining_credits - held_credits",
        source=source,
        order=BURN_ORDER.format(t=""),
        amount=amount,
    )
    return Step(sql, must_change_one_row=False)


def _adds_up(*, table: str, column: str, owner: str, amount: str) -> Step:
    """Stop the plan unless the rows written for `owner` add up to `amount`."""
    return Step(
        f"(SELECT COALESCE(SUM(credits), 0) FROM {table} WHERE {column} = {owner}) = {amount}",
        must_change_one_row=False,
        is_condition=True,
    )


def _apply(*, table: str, column: str, owner: str, assignments: str) -> Step:
    """Update the lots named by `table`'s rows for `owner` (`d`: that row, in `assignments`)."""
    if vendor() == "mysql":
        sql = (
            f"UPDATE credit_lots JOIN {table} d ON d.lot_id = credit_lots.id SET {assignments} "
            f"WHERE d.{column} = {owner}"
        )
    else:  # SQLite: UPDATE … FROM
        sql = (
            f"UPDATE credit_lots SET {assignments} FROM {table} d "
            f"WHERE d.lot_id = credit_lots.id AND d.{column} = {owner}"
        )
    return Step(sql, must_change_one_row=False)


def draw_steps(
    *, wallet: str, row: str, amount: int, only_lot_ids: list[int] | None = None, bound: str | None = None
) -> list[Step | Branch]:
    """Take `amount` free credits in burn order (from `only_lot_ids` if given) for the ledger
    row `row` of `wallet` (both SQL expressions: an id, a variable, a subquery): draws
    written, lots reduced, the sum checked. The amount is bound to a variable of the plan (the
    steps' SQL is the same for every amount, as a stored plan needs) — `bound`, if the plan's
    earlier steps already set one to it; lot ids, if given, are written into it."""
    steps, take = _bound(amount, bound)
    ids = None if only_lot_ids is None else tuple(_int(i) for i in only_lot_ids)
    return [*steps, *_take_steps("credit_draws", wallet, row, take, ids, vendor())]


def pin_steps(*, wallet: str, hold: str, amount: int, bound: str | None = None) -> list[Step | Branch]:
    """Reserve `amount` free credits in burn order for the hold `hold` (SQL, like `wallet`):
    pins written, the lots' `held_credits` raised, the sum checked (the amount bound as above)."""
    steps, take = _bound(amount, bound)
    return [*steps, *_take_steps("credit_hold_lots", wallet, hold, take, None, vendor())]


def _bound(amount: int, bound: str | None) -> tuple[list[Step], str]:
    """Steps binding `amount` to a variable of the plan, and SQL reading it — none on MariaDB if
    the plan's earlier steps already set the variable `bound` to it."""
    amount = _int(amount)
    return ([], bound) if bound is not None and vendor() == "mysql" else bind("lot_take", amount)


# What a take writes into each table: the owner's column, and the lot's column it moves.
_TAKES = {
    "credit_draws": ("transaction_id", "remaining_credits = remaining_credits - {n}"),
    "credit_hold_lots": ("hold_id", "held_credits = held_credits + {n}"),
}


@functools.lru_cache(maxsize=256)
def _take_steps(
    table: str, wallet: str, owner: str, amount: str, only_lot_ids: tuple[int, ...] | None, vendor_name: str
) -> tuple[Step | Branch, ...]:
    """The steps of a take of `amount` (SQL: the bound variable) into `table` for `owner`, built
    once per shape (they carry no parameter). The general steps burn over all the wallet's open
    lots: rows written for `owner`, the lots changed by them, their sum checked. On MariaDB
    (without `only_lot_ids`) the common case goes a short way first: when the first lot in burn
    order has the whole amount free, the take is one row and one change of that lot — what the
    general steps would write, without their window over the lots, their join and their sum.

    That first lot is found and changed by one UPDATE … ORDER BY … LIMIT 1, after the wallet's
    row is locked, as every change of a lot is made (the lock order); it takes the amount only
    if the lot has all of it free, so it never overdraws a lot, and when it took nothing the
    general steps run over the lots as they are."""
    column, assignment = _TAKES[table]
    general = (
        _from_open_lots(table=table, owner=owner, wallet=wallet, amount=amount, only_lot_ids=only_lot_ids),
        _apply(table=table, column=column, owner=owner, assignments=assignment.format(n="d.credits")),
        _adds_up(table=table, column=column, owner=owner, amount=amount),
    )
    if vendor_name != "mysql" or only_lot_ids is not None:
        return general
    # One statement finds the first lot in burn order and takes the amount from it if it has all of
    # it free (else 0, leaving it as it was): an UPDATE reads the lots as they are now, whatever
    # the transaction's isolation level (a snapshot taken before the wallet was locked could name
    # a lot the burn order no longer takes first), and locks only this wallet's open lots, behind
    # its lock already. Its SET is evaluated for that one lot alone, after the sort: the lot's id
    # and what was taken from it are kept for the draw (or pin) the short way writes.
    took = (
        f"(@lot_took := CASE WHEN {amount} > 0 AND (@lot_first := id) IS NOT NULL "
        f"AND remaining_credits - held_credits >= {amount} THEN {amount} ELSE 0 END)"
    )
    first = (
        f"UPDATE credit_lots SET {assignment.format(n=took)} "
        f"WHERE wallet_id = {wallet} AND is_open = 1 AND remaining_credits > held_credits "
        f"ORDER BY {BURN_ORDER.format(t='')} LIMIT 1"
    )
    short = (Step(f"INSERT INTO {table} ({column}, lot_id, credits) VALUES ({owner}, @lot_first, {amount})"),)
    return (
        Step("SET @lot_first = NULL, @lot_took = 0", must_change_one_row=False),
        Step(first, must_change_one_row=False),
        Branch(f"{amount} > 0 AND @lot_took = {amount}", then=short, otherwise=general),
    )


def capture_steps(*, hold: str, row: str, amount: str | None) -> list[Step]:
    """The capture of `amount` credits (SQL; None: all) of the hold `hold` (SQL for its id) as the
    ledger row `row`: draws from the hold's own pins in burn order; every pin freed (the rest is
    released)."""
    amount_sql = f"(SELECT amount FROM credit_holds WHERE id = {hold})" if amount is None else amount
    take = _burn_into(
        table="credit_draws",
        owner=row,
        lot="p.lot_id",
        free="p.credits",
        source=f"credit_hold_lots p JOIN credit_lots l ON l.id = p.lot_id WHERE p.hold_id = {hold}",
        order=BURN_ORDER.format(t="l."),
        amount=amount_sql,
    )
    return [
        Step(take, must_change_one_row=False),
        unpin_step(hold=hold),  # first: a lot's remaining never drops below what it holds
        _apply(
            table="credit_draws",
            column="transaction_id",
            owner=row,
            assignments="remaining_credits = remaining_credits - d.credits",
        ),
        _adds_up(table="credit_draws", column="transaction_id", owner=row, amount=amount_sql),
    ]


def unpin_step(*, hold: str) -> Step:
    """A released (or expired, or captured) hold's pins freed (`hold`: SQL for its id)."""
    return _apply(
        table="credit_hold_lots",
        column="hold_id",
        owner=hold,
        assignments="held_credits = held_credits - d.credits",
    )


def open_lot(*, wallet: Wallet, row: CreditTransaction, terms: LotTerms) -> CreditLot:
    """The lot of credits a positive ledger row brought in (the wallet is locked)."""
    return CreditLot.objects.create(
        wallet=wallet,
        category=terms.category,
        source=terms.source or row.kind,
        original_credits=row.amount,
        remaining_credits=row.amount,
        expires_at=terms.expires_at,
        priority=terms.priority,
        cost_basis_cents=terms.cost_basis_cents if terms.category == LotCategory.PAID else 0,
        currency=terms.currency,
        transaction=row,
        purchase_id=terms.purchase_id,
        actor_id=terms.actor_id,
    )


def draw(*, wallet: Wallet, row: CreditTransaction, amount: int, only_lot_ids: list[int] | None = None) -> None:
    """Take `amount` free credits in burn order (from `only_lot_ids` if given) for the debit
    `row` of the locked `wallet`, inside the verb's transaction."""
    steps = draw_steps(wallet=str(_int(wallet.pk)), row=str(_int(row.pk)), amount=amount, only_lot_ids=only_lot_ids)
    try:
        run_plan(steps)
    except PlanStopped as stopped:
        raise LedgerInconsistent(
            f"The lots of wallet {wallet.pk} do not cover a debit of {amount} credits (row {row.pk})."
        ) from stopped
