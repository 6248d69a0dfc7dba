"""A MariaDB database of its own for benchmarks (never the app's or the tests')."""

import os

BENCH_DATABASE = os.environ.get("BENCH_DATABASE", "ledger_bench")
SERVER = {"host": "127.0.0.1", "port": 3306, "user": "root", "passwd": ""}
# `settle` waits for InnoDB to be this idle: a few hundred undo records left, under 50 pages a second written.
QUIET_HISTORY = 1000
QUIET_PAGES_PER_SECOND = 50


def use_bench_database() -> None:
    """Point Django at the bench database, create and migrate it if needed (with progress)."""
    import MySQLdb

    os.environ["DATABASE_URL"] = f"mysql://root@127.0.0.1:3306/{BENCH_DATABASE}"
    os.environ.setdefault("SECRET_KEY", "bench-only-secret")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    server = MySQLdb.connect(**SERVER)
    server.cursor().execute(
        f"CREATE DATABASE IF NOT EXISTS `{BENCH_DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )
    server.close()

    import django
    from django.core.management import call_command

    django.setup()
    print(f"Using MariaDB database {BENCH_DATABASE!r}; applying migrations (slow the first time)…", flush=True)
    call_command("migrate", verbosity=0)


def settle(*, at_most: float = 30.0) -> None:
    """Wait, at most `at_most` seconds, until InnoDB has finished what an earlier bulk step left
    it to do in the background — purging deleted rows, flushing dirty pages — so that this work
    is not timed with the next measurement. Prints how long it waited."""
    import time

    from django.db import connection

    def status(cursor) -> tuple[int, int, int]:
        """Undo history length, pages flushed so far, dirty pages now."""
        cursor.execute(
            "SHOW GLOBAL STATUS WHERE Variable_name IN "
            "('Innodb_history_list_length', 'Innodb_buffer_pool_pages_flushed', 'Innodb_buffer_pool_pages_dirty')"
        )
        values = {name: int(value) for name, value in cursor.fetchall()}
        return (
            values["Innodb_history_list_length"],
            values["Innodb_buffer_pool_pages_flushed"],
            values["Innodb_buffer_pool_pages_dirty"],
        )

    started = time.monotonic()
    with connection.cursor() as cursor:
        _, flushed, _ = status(cursor)
        while True:
            time.sleep(1)
            history, now_flushed, dirty = status(cursor)
            pages, flushed = now_flushed - flushed, now_flushed
            quiet = history < QUIET_HISTORY and pages < QUIET_PAGES_PER_SECOND
            if quiet or time.monotonic() - started >= at_most:
                break
    print(
        f"  MariaDB {'settled' if quiet else 'still busy'} after {time.monotonic() - started:.0f} s "
        f"(undo history {history:,}, {pages:,} pages flushed in the last second, {dirty:,} dirty)",
        flush=True,
    )


# --- the ledger's invariants on bench data --------------------------------------------------
# Every wallet's balance must equal the sum of its lots' remaining credits, and every debit draws
# lots (`billing/ledger/lots.py`): a balance raised by bare SQL makes charges fail with
# `LedgerInconsistent`. These helpers set bench wallets up as the ledger would have left them, so
# that `python manage.py reconcile_ledger` stays clean on the bench database.

# Every table the ledger writes, children first (TRUNCATE, with foreign key checks off).
LEDGER_TABLES = (
    "credit_draws",
    "credit_hold_lots",
    "credit_lots",
    "credit_approval_requests",
    "credit_shortfalls",
    "credit_purchases",
    "agent_runs",
    "credit_transactions",
    "credit_holds",
)
FUNDS_REASON = "bench funds"
# The lot categories `fund_wallets` takes; "mixed" alternates them lot by lot.
CATEGORIES = ("promotional", "paid", "mixed")


def empty_ledger() -> None:
    """Empty the ledger — rows, lots, draws, holds, runs, purchases — and zero every wallet
    (bench database only). TRUNCATE, not DELETE: a million deleted rows would keep InnoDB
    purging through the next measurement."""
    from django.db import connection

    assert connection.settings_dict["NAME"] == BENCH_DATABASE, "only the bench database is ever emptied"
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM credit_transactions")
        print(f"emptying the bench ledger ({cursor.fetchone()[0]:,} rows)…", flush=True)
        cursor.execute("SET SESSION foreign_key_checks = 0")  # TRUNCATE refuses referenced tables otherwise
        try:
            for table in LEDGER_TABLES:
                cursor.execute(f"TRUNCATE TABLE {table}")
        finally:
            cursor.execute("SET SESSION foreign_key_checks = 1")
        cursor.execute("UPDATE credit_wallets SET balance_credits = 0, held_credits = 0, shortfall_credits = 0")


def fund_wallets(wallet_ids: list[int], credits: int, *, lots: int = 1, category: str = "promotional") -> None:
    """Give each wallet `credits` more, as the ledger would have: its balance raised, and `lots`
    lots (never expiring) whose remaining credits add up to `credits`, each brought in by its own
    `grant` row (`balance_after` chained on the wallet's balance), as `ledger.grant` writes them.

    The lots are of equal size (the first takes the remainder). `category` is "promotional",
    "paid" (cost basis 0) or "mixed": then the lots alternate promotional and paid and take
    shuffled priorities (lot k gets 7·k mod `lots`), so that the burn order has to sort them
    rather than find them in id order. Bulk inserts in one transaction, the wallets locked."""
    from django.db import connection, transaction

    from billing.models import CreditLot, CreditTransaction, LotSource, TransactionKind

    if lots < 1 or credits < lots:
        raise ValueError(f"cannot split {credits} credits into {lots} lot(s) of at least one credit")
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, not {category!r}")
    sizes = [credits // lots + (credits % lots if k == 0 else 0) for k in range(lots)]
    terms = [
        (
            ("promotional" if k % 2 == 0 else "paid") if category == "mixed" else category,
            7 * k % lots if category == "mixed" else 0,
        )
        for k in range(lots)
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, balance_credits FROM credit_wallets WHERE id IN ({}) ORDER BY id FOR UPDATE".format(
                ",".join(["%s"] * len(wallet_ids))
            ),
            list(wallet_ids),
        )
        balances = dict(cursor.fetchall())
        if missing := set(wallet_ids) - set(balances):
            raise ValueError(f"no such wallet(s): {sorted(missing)}")
        rows = []
        for wallet_id, balance in balances.items():
            for size in sizes:
                balance += size
                rows.append(
                    CreditTransaction(
                        wallet_id=wallet_id,
                        kind=TransactionKind.GRANT,
                        amount=size,
                        balance_after=balance,
                        reason=FUNDS_REASON,
                    )
                )
        CreditTransaction.objects.bulk_create(rows, batch_size=2000)  # ids come back (INSERT … RETURNING)
        assert all(row.id for row in rows), "MariaDB ≥ 10.5 returns the ids of a bulk insert"
        CreditLot.objects.bulk_create(
            (
                CreditLot(
                    wallet_id=row.wallet_id,
                    category=terms[n % lots][0],
                    source=LotSource.GRANT,
                    original_credits=row.amount,
                    remaining_credits=row.amount,
                    priority=terms[n % lots][1],
                    transaction_id=row.id,
                )
                for n, row in enumerate(rows)
            ),
            batch_size=2000,
        )
        cursor.execute(
            "UPDATE credit_wallets SET balance_credits = balance_credits + %s, updated_at = UTC_TIMESTAMP(6) "
            "WHERE id IN ({})".format(",".join(["%s"] * len(balances))),
            [credits, *balances],
        )


def open_history_lot(wallet_id: int) -> None:
    """For a wallet whose ledger rows were written in bulk without lots (a synthetic history, as
    the export and scale benchmarks write): its lots replaced by one opening lot that covers its
    balance, created after all its rows — what migration 0012 gave every wallet that had credits
    before lots. Refuses a wallet whose lots were already drawn or pinned."""
    from django.db import connection, transaction

    from billing.models import CreditLot, LotSource, Wallet

    with transaction.atomic():
        wallet = Wallet.objects.select_for_update().get(pk=wallet_id)
        if wallet.held_credits:
            raise ValueError(f"wallet {wallet_id} has pending holds: its lots must stay pinned")
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM credit_lots WHERE wallet_id = %s AND NOT EXISTS "
                "(SELECT 1 FROM credit_draws d WHERE d.lot_id = credit_lots.id) AND NOT EXISTS "
                "(SELECT 1 FROM credit_hold_lots p WHERE p.lot_id = credit_lots.id)",
                [wallet_id],
            )
            if CreditLot.objects.filter(wallet_id=wallet_id).exists():
                raise ValueError(f"wallet {wallet_id}'s lots were already spent from: empty the ledger first")
        if wallet.balance_credits > 0:
            CreditLot.objects.create(
                wallet=wallet,
                category="promotional",
                source=LotSource.OPENING,
                original_credits=wallet.balance_credits,
                remaining_credits=wallet.balance_credits,
            )


def undo_peer_charges(wallet_ids: list[int]) -> None:
    """The peers compared with the ledger (the raw-SQL floor, the naive ORM peer) write `charge`
    rows without drawing lots, and the naive peer loses updates, so their wallets no longer
    reconcile: once they are measured, their charge rows are deleted and the balances put back to
    what the remaining rows (the funds) add up to. Peers get wallets of their own for this; a
    charge row that drew lots (the ledger's own) is refused by its draws' foreign key."""
    from django.db import connection, transaction

    marks = ",".join(["%s"] * len(wallet_ids))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM credit_wallets WHERE id IN ({marks}) FOR UPDATE", list(wallet_ids))
        cursor.execute(f"DELETE FROM credit_transactions WHERE wallet_id IN ({marks}) AND kind = 'charge'", wallet_ids)
        cursor.execute(
            "UPDATE credit_wallets w SET balance_credits = (SELECT COALESCE(SUM(t.amount), 0) "
            f"FROM credit_transactions t WHERE t.wallet_id = w.id) WHERE w.id IN ({marks})",
            list(wallet_ids),
        )
