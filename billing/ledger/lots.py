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
belong to that hold's run. The rule lives in `_BURN`, one window over the wallet's open lots,
used by every debit (charge, debit adjustment, claw-back, shortfall collection, expiry) and every
hold; a capture walks its own pins in the same order. Statements run inside the verb's plan or
transaction, after the wallet row is locked (lock order: wallet → hold → lots → run).

Each step list ends with a check that the draws (or pins) add up to the amount: a plan whose lots
disagree with the wallet stops (nothing kept) instead of writing a row the lots do not back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billing.ledger.errors import LedgerInconsistent
from billing.ledger.sql import PlanStopped, Step, run_plan
from billing.models import CreditLot, CreditTransaction, LotCategory, Wallet

BURN_ORDER = (
    "{t}priority, CASE WHEN {t}expires_at IS NULL THEN 1 ELSE 0 END, {t}expires_at, "
    "CASE WHEN {t}category = 'paid' THEN 1 ELSE 0 END, {t}id"
)

# Take `amount` (%s) in burn order from the rows of `source` (id, free, sort columns): each
# row gives min(free, what is still missing). `running − free` is what earlier rows gave.
_BURN = (
    "SELECT {owner}, id, CASE WHEN free < %s - (running - free) THEN free ELSE %s - (running - free) END "
    "FROM (SELECT id, free, SUM(free) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS running "
    "FROM ({source}) candidates) ordered WHERE running - free < %s"
)
_OPEN_LOTS = (
    "SELECT id, remaining_credits - held_credits AS free, priority, expires_at, category "
    "FROM credit_lots WHERE wallet_id = {wallet} AND remaining_credits > 0 AND remaining_credits > held_credits"
)


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


def _burn_into(*, table: str, owner: str, source: str, amount: str) -> str:
    """INSERT the takes of `amount` from `source`'s rows (id, free, priority, expires_at,
    category) in burn order into `table`, for `owner` (a row or hold id, as SQL)."""
    column = "transaction_id" if table == "credit_draws" else "hold_id"
    return (
        f"INSERT INTO {table} ({column}, lot_id, credits) SELECT {owner}, id, "
        f"CASE WHEN free < {amount} - (running - free) THEN free ELSE {amount} - (running - free) END "
        f"FROM (SELECT id, free, SUM(free) OVER (ORDER BY {BURN_ORDER.format(t='')} ROWS UNBOUNDED PRECEDING) "
        f"AS running FROM ({source}) candidates) ordered WHERE running - free < {amount}"
    )


def _open_lots(wallet: str, only_lot_ids: list[int] | None = None) -> str:
    source = (
        "SELECT id, remaining_credits - held_credits AS free, priority, expires_at, category FROM credit_lots "
        f"WHERE wallet_id = {wallet} AND remaining_credits > 0 AND remaining_credits > held_credits"
    )
    if only_lot_ids is not None:
        source += f" AND id IN ({', '.join(str(_int(i)) for i in only_lot_ids) or 'NULL'})"
    return source


def _adds_up(*, wallet: str, table: str, column: str, owner: str, amount: str, at) -> Step:
    """Stop the plan unless the rows written for `owner` add up to `amount`."""
    return Step(
        f"UPDATE credit_wallets SET updated_at = %s WHERE id = {wallet} "
        f"AND (SELECT COALESCE(SUM(credits), 0) FROM {table} WHERE {column} = {owner}) = {amount}",
        [at],
    )


def draw_steps(*, wallet: str, row: str, amount: int, at, only_lot_ids: list[int] | None = None) -> list[Step]:
    """Take `amount` free credits in burn order (from `only_lot_ids` if given) for the ledger
    row `row` of `wallet` (both SQL expressions: an id, a variable, a subquery): draws
    written, lots reduced, the sum checked."""
    amount_sql = str(_int(amount))
    return [
        Step(
            _burn_into(table="credit_draws", owner=row, source=_open_lots(wallet, only_lot_ids), amount=amount_sql),
            must_change_one_row=False,
        ),
        Step(
            "UPDATE credit_lots SET remaining_credits = remaining_credits - "
            f"(SELECT d.credits FROM credit_draws d WHERE d.transaction_id = {row} AND d.lot_id = credit_lots.id) "
            f"WHERE id IN (SELECT lot_id FROM credit_draws WHERE transaction_id = {row})",
            must_change_one_row=False,
        ),
        _adds_up(wallet=wallet, table="credit_draws", column="transaction_id", owner=row, amount=amount_sql, at=at),
    ]


def pin_steps(*, wallet: str, hold: str, amount: int, at) -> list[Step]:
    """Reserve `amount` free credits in burn order for the hold `hold` (SQL, like `wallet`):
    pins written, the lots' `held_credits` raised, the sum checked."""
    amount_sql = str(_int(amount))
    return [
        Step(
            _burn_into(table="credit_hold_lots", owner=hold, source=_open_lots(wallet), amount=amount_sql),
            must_change_one_row=False,
        ),
        Step(
            "UPDATE credit_lots SET held_credits = held_credits + "
            f"(SELECT p.credits FROM credit_hold_lots p WHERE p.hold_id = {hold} AND p.lot_id = credit_lots.id) "
            f"WHERE id IN (SELECT lot_id FROM credit_hold_lots WHERE hold_id = {hold})",
            must_change_one_row=False,
        ),
        _adds_up(wallet=wallet, table="credit_hold_lots", column="hold_id", owner=hold, amount=amount_sql, at=at),
    ]


def capture_steps(*, hold_id: int, row: str, amount: int | None, at) -> list[Step]:
    """The capture of `amount` credits (None: all) of hold `hold_id` as the ledger row `row`:
    draws from the hold's own pins in burn order; every pin freed (the rest is released)."""
    hold = str(_int(hold_id))
    amount_sql = f"(SELECT amount FROM credit_holds WHERE id = {hold})" if amount is None else str(_int(amount))
    pins = (
        "SELECT p.lot_id AS id, p.credits AS free, l.priority, l.expires_at, l.category "
        f"FROM credit_hold_lots p JOIN credit_lots l ON l.id = p.lot_id WHERE p.hold_id = {hold}"
    )
    return [
        Step(_burn_into(table="credit_draws", owner=row, source=pins, amount=amount_sql), must_change_one_row=False),
        Step(
            "UPDATE credit_lots SET remaining_credits = remaining_credits - COALESCE("
            f"(SELECT d.credits FROM credit_draws d WHERE d.transaction_id = {row} AND d.lot_id = credit_lots.id), 0), "
            "held_credits = held_credits - "
            f"(SELECT p.credits FROM credit_hold_lots p WHERE p.hold_id = {hold} AND p.lot_id = credit_lots.id) "
            f"WHERE id IN (SELECT lot_id FROM credit_hold_lots WHERE hold_id = {hold})",
            must_change_one_row=False,
        ),
        _adds_up(
            wallet=f"(SELECT wallet_id FROM credit_holds WHERE id = {hold})",
            table="credit_draws",
            column="transaction_id",
            owner=row,
            amount=amount_sql,
            at=at,
        ),
    ]


def unpin_step(*, hold_id: int) -> Step:
    """A released (or expired) hold's pins freed."""
    hold = str(_int(hold_id))
    return Step(
        "UPDATE credit_lots SET held_credits = held_credits - "
        f"(SELECT p.credits FROM credit_hold_lots p WHERE p.hold_id = {hold} AND p.lot_id = credit_lots.id) "
        f"WHERE id IN (SELECT lot_id FROM credit_hold_lots WHERE hold_id = {hold})",
        must_change_one_row=False,
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


def draw(*, wallet: Wallet, row: CreditTransaction, amount: int, at, only_lot_ids: list[int] | None = None) -> None:
    """Take `amount` free credits in burn order (from `only_lot_ids` if given) for the debit
    `row` of the locked `wallet`, inside the verb's transaction."""
    steps = draw_steps(
        wallet=str(_int(wallet.pk)), row=str(_int(row.pk)), amount=amount, at=at, only_lot_ids=only_lot_ids
    )
    try:
        run_plan(steps)
    except PlanStopped as stopped:
        raise LedgerInconsistent(
            f"The lots of wallet {wallet.pk} do not cover a debit of {amount} credits (row {row.pk})."
        ) from stopped
