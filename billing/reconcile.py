"""Ledger reconciliation: find every way the stored figures could disagree. Changes nothing.

Each check is one set-based query, so the cost grows with the ledger, not with round trips;
wallets are checked in id-ordered batches so progress can be reported on large ledgers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import (
    CreditHold,
    CreditLot,
    CreditShortfall,
    CreditTransaction,
    HoldStatus,
    Purchase,
    PurchaseStatus,
    TransactionKind,
    Wallet,
)

BATCH = 1000

# Checks other apps add (agent runs against their charges), so billing never imports them.
_EXTRA_CHECKS: list[Callable[[], Iterator[Drift]]] = []


def register_check(check: Callable[[], Iterator[Drift]]) -> None:
    """Add `check` to every reconciliation (idempotent)."""
    if check not in _EXTRA_CHECKS:
        _EXTRA_CHECKS.append(check)


@dataclass(frozen=True)
class Drift:
    check: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.subject}: {self.detail}"


def _wallet_batches(batch: int) -> Iterator[tuple[int, int]]:
    """(first id, last id) of consecutive wallet batches."""
    last = 0
    while True:
        ids = list(Wallet.objects.filter(id__gt=last).order_by("id").values_list("id", flat=True)[:batch])
        if not ids:
            return
        yield ids[0], ids[-1]
        last = ids[-1]


def _check_wallets(first: int, last: int) -> Iterator[Drift]:
    in_batch = Q(id__gte=first, id__lte=last)
    wallets = (
        Wallet.objects.filter(in_batch)
        .annotate(ledger_sum=Coalesce(Sum("transactions__amount"), 0))
        .filter(~Q(balance_credits=F("ledger_sum")))
    )
    for wallet in wallets:
        yield Drift(
            "balance", f"wallet {wallet.id}", f"balance {wallet.balance_credits} ≠ Σ amounts {wallet.ledger_sum}"
        )

    held = dict(
        CreditHold.objects.filter(wallet_id__gte=first, wallet_id__lte=last, status=HoldStatus.PENDING)
        .values_list("wallet_id")
        .annotate(total=Sum("amount"))
    )
    owed = dict(
        CreditShortfall.objects.filter(wallet_id__gte=first, wallet_id__lte=last, settled_at__isnull=True)
        .values_list("wallet_id")
        .annotate(total=Sum(F("amount") - F("cancelled_credits")))
    )
    for wallet_id, held_credits, shortfall in Wallet.objects.filter(in_batch).values_list(
        "id", "held_credits", "shortfall_credits"
    ):
        if held_credits != held.get(wallet_id, 0):
            yield Drift(
                "held", f"wallet {wallet_id}", f"held {held_credits} ≠ Σ pending holds {held.get(wallet_id, 0)}"
            )
        if shortfall != owed.get(wallet_id, 0):
            yield Drift(
                "shortfall",
                f"wallet {wallet_id}",
                f"shortfall {shortfall} ≠ Σ open shortfalls {owed.get(wallet_id, 0)}",
            )

    # Each row's balance_after must continue the previous row of its wallet.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT id, wallet_id, amount, balance_after, previous FROM (
                SELECT id, wallet_id, amount, balance_after,
                       COALESCE(LAG(balance_after) OVER (PARTITION BY wallet_id ORDER BY id), 0) AS previous
                FROM credit_transactions WHERE wallet_id BETWEEN %s AND %s
            ) chained
            WHERE balance_after <> previous + amount
            """,
            [first, last],
        )
        for row_id, wallet_id, amount, balance_after, previous in cursor.fetchall():
            yield Drift(
                "chain",
                f"transaction {row_id} (wallet {wallet_id})",
                f"balance_after {balance_after} ≠ previous {previous} + amount {amount}",
            )


_LOT_CHECKS = (
    (
        "lots",
        "SELECT w.id, w.balance_credits, w.held_credits, COALESCE(SUM(l.remaining_credits), 0), "
        "COALESCE(SUM(l.held_credits), 0) FROM credit_wallets w LEFT JOIN credit_lots l ON l.wallet_id = w.id "
        "WHERE w.id BETWEEN %s AND %s GROUP BY w.id, w.balance_credits, w.held_credits "
        "HAVING w.balance_credits <> COALESCE(SUM(l.remaining_credits), 0) "
        "OR w.held_credits <> COALESCE(SUM(l.held_credits), 0)",
        lambda r: (f"wallet {r[0]}", f"balance {r[1]}, held {r[2]} ≠ Σ lot remaining {r[3]}, Σ lot held {r[4]}"),
    ),
    (
        "lot",
        "SELECT l.id, l.wallet_id, l.original_credits, l.remaining_credits, "
        "(SELECT COALESCE(SUM(d.credits), 0) FROM credit_draws d WHERE d.lot_id = l.id) "
        "FROM credit_lots l WHERE l.wallet_id BETWEEN %s AND %s AND l.remaining_credits <> l.original_credits - "
        "(SELECT COALESCE(SUM(d.credits), 0) FROM credit_draws d WHERE d.lot_id = l.id)",
        lambda r: (f"lot {r[0]} (wallet {r[1]})", f"remaining {r[3]} ≠ original {r[2]} − Σ draws {r[4]}"),
    ),
    (
        "lot",
        "SELECT l.id, l.wallet_id, l.held_credits, (SELECT COALESCE(SUM(p.credits), 0) FROM credit_hold_lots p "
        "JOIN credit_holds h ON h.id = p.hold_id WHERE p.lot_id = l.id AND h.status = 'pending') "
        "FROM credit_lots l WHERE l.wallet_id BETWEEN %s AND %s AND l.held_credits <> "
        "(SELECT COALESCE(SUM(p.credits), 0) FROM credit_hold_lots p "
        "JOIN credit_holds h ON h.id = p.hold_id WHERE p.lot_id = l.id AND h.status = 'pending')",
        lambda r: (f"lot {r[0]} (wallet {r[1]})", f"held {r[2]} ≠ Σ pins of pending holds {r[3]}"),
    ),
    (
        "draws",
        "SELECT t.id, t.wallet_id, t.amount, (SELECT COALESCE(SUM(d.credits), 0) FROM credit_draws d "
        "WHERE d.transaction_id = t.id) FROM credit_transactions t WHERE t.wallet_id BETWEEN %s AND %s "
        "AND t.amount < 0 AND t.created_at > (SELECT MIN(o.created_at) FROM credit_lots o "
        "WHERE o.wallet_id = t.wallet_id) AND -t.amount <> "
        "(SELECT COALESCE(SUM(d.credits), 0) FROM credit_draws d WHERE d.transaction_id = t.id)",
        lambda r: (f"transaction {r[0]} (wallet {r[1]})", f"debit of {-r[2]} but Σ draws {r[3]}"),
    ),
    (
        "draws",
        "SELECT t.id, t.wallet_id, t.amount FROM credit_transactions t WHERE t.wallet_id BETWEEN %s AND %s "
        "AND t.amount > 0 AND t.created_at > (SELECT MIN(o.created_at) FROM credit_lots o "
        "WHERE o.wallet_id = t.wallet_id) AND NOT EXISTS "
        "(SELECT 1 FROM credit_lots l WHERE l.transaction_id = t.id AND l.original_credits = t.amount)",
        lambda r: (f"transaction {r[0]} (wallet {r[1]})", f"{r[2]} credits in without a lot of that size"),
    ),
)


def _check_lots(first: int, last: int) -> Iterator[Drift]:
    """balance == Σ lot remaining and held == Σ lot held per wallet; remaining == original − Σ
    draws and held == Σ pins of pending holds per lot; every debit drawn in full and every
    credit a lot, since the wallet's first lot (rows older than lots have neither)."""
    with connection.cursor() as cursor:
        for check, sql, describe in _LOT_CHECKS:
            cursor.execute(sql, [first, last])
            for row in cursor.fetchall():
                yield Drift(check, *describe(row))


def _check_purchases() -> Iterator[Drift]:
    for purchase in Purchase.objects.filter(status=PurchaseStatus.PAID).filter(
        Q(transaction__isnull=True)
        | ~Q(transaction__kind=TransactionKind.PURCHASE)
        | ~Q(transaction__amount=F("credits"))
    ):
        yield Drift("purchase", purchase.stripe_checkout_session_id, "paid, but without exactly its purchase row")
    for session_id, rows in (
        CreditTransaction.objects.filter(kind=TransactionKind.PURCHASE)
        .values_list("stripe_checkout_session_id")
        .annotate(rows=Count("id"))
        .filter(rows__gt=1)
    ):
        yield Drift("purchase", str(session_id), f"{rows} purchase rows for one checkout session")
    orphans = CreditTransaction.objects.filter(kind=TransactionKind.PURCHASE, purchase__isnull=True)
    for row in orphans.values_list("id", "stripe_checkout_session_id"):
        yield Drift("purchase", f"transaction {row[0]}", f"purchase row for {row[1]} belongs to no paid purchase")


def _check_clawbacks() -> Iterator[Drift]:
    """Every refunded/disputed share of a purchase was taken back (as rows or recorded shortfall)."""
    taken = dict(
        CreditTransaction.objects.filter(kind=TransactionKind.CLAWBACK, metadata__purchase_id__isnull=False)
        .values_list("metadata__purchase_id")
        .annotate(total=Sum("amount"))
    )
    short = dict(
        CreditShortfall.objects.values_list("purchase_id").annotate(total=Sum(F("amount") - F("cancelled_credits")))
    )
    refunded = Purchase.objects.filter(Q(refunded_cents__gt=0) | Q(disputed_cents__gt=0) | Q(clawed_back_credits__gt=0))
    for purchase in refunded:
        target = purchase.clawback_target_credits
        accounted = -(taken.get(purchase.id) or 0) + (short.get(purchase.id) or 0)
        if purchase.clawed_back_credits != target or accounted != target:
            yield Drift(
                "clawback",
                purchase.stripe_checkout_session_id,
                f"refunded/disputed share is {target} credits; recorded {purchase.clawed_back_credits}, "
                f"clawed back + shortfall {accounted}",
            )


def _check_stale_holds() -> Iterator[Drift]:
    """A pending hold past its expiry by more than the sweep interval: `expire_holds` is not running."""
    cutoff = timezone.now() - timedelta(seconds=settings.EXPIRE_HOLDS_EVERY_SECONDS)
    for hold_id, expires_at in CreditHold.objects.filter(status=HoldStatus.PENDING, expires_at__lt=cutoff).values_list(
        "id", "expires_at"
    ):
        yield Drift("hold", f"hold {hold_id}", f"pending, expired {expires_at.isoformat()}: is expire_holds running?")


def _check_unswept_lots() -> Iterator[Drift]:
    """Free credits past their lot's expiry by more than the sweep interval: `expire_credits` is not running."""
    cutoff = timezone.now() - timedelta(seconds=settings.EXPIRE_CREDITS_EVERY_SECONDS)
    unswept = CreditLot.objects.filter(expires_at__lt=cutoff, remaining_credits__gt=F("held_credits"))
    for lot_id, expires_at, remaining, held in unswept.values_list(
        "id", "expires_at", "remaining_credits", "held_credits"
    )[:100]:
        yield Drift(
            "expiry",
            f"lot {lot_id}",
            f"{remaining - held} credits past their expiry {expires_at.isoformat()}: is expire_credits running?",
        )


def reconcile(*, batch: int = BATCH, progress: Callable[[int, int], None] | None = None) -> list[Drift]:
    """All drift found, as a list (empty when the ledger is sound)."""
    drift: list[Drift] = []
    total = Wallet.objects.count()
    checked = 0
    for first, last in _wallet_batches(batch):
        drift.extend(_check_wallets(first, last))
        drift.extend(_check_lots(first, last))
        checked += Wallet.objects.filter(id__gte=first, id__lte=last).count()
        if progress:
            progress(checked, total)
    drift.extend(_check_purchases())
    drift.extend(_check_clawbacks())
    drift.extend(_check_stale_holds())
    drift.extend(_check_unswept_lots())
    for check in _EXTRA_CHECKS:
        drift.extend(check())
    return drift
