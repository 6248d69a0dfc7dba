"""Benchmark: is a charge's cost flat in the size of the ledger? 10k rows against 1M rows.

    make bench-scale          (or: python -m bench.ledger_scale [--charges N])

On the local MariaDB (database `ledger_bench`): the ledger table is emptied, filled to 10,000
rows (one wallet's consistent history of +1 grants), and `billing.ledger.charge` is timed on that
wallet; then the table is filled to 1,000,000 rows and timed again, with a wallet read
(`wallet_summary`, what GET /billing/wallet serves) timed alongside.
Results: bench/results/ledger_scale.json and .md.
"""

import argparse
import statistics
import time

from bench.db import use_bench_database
from bench.report import table, write

SIZES = (10_000, 1_000_000)
CHUNK = 100_000
FUNDS = 10**12


def empty_ledger() -> None:
    """Delete every ledger row and zero every wallet (bench database only), in chunks."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM credit_transactions")
        total = cursor.fetchone()[0]
        print(f"emptying the bench ledger ({total:,} rows)…", flush=True)
        while True:
            cursor.execute(f"DELETE FROM credit_transactions ORDER BY id LIMIT {CHUNK}")
            if cursor.rowcount < CHUNK:
                break
        for table in ("agent_runs", "credit_holds"):
            cursor.execute(f"DELETE FROM {table}")
        cursor.execute("UPDATE credit_wallets SET balance_credits = 0, held_credits = 0, shortfall_credits = 0")


def fill_to(wallet_id: int, rows: int) -> None:
    """Append +1 grants to the wallet until the ledger holds `rows` rows; balance_after stays a chain."""
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM credit_transactions")
        have = cursor.fetchone()[0]
        started = time.perf_counter()
        while have < rows:
            batch = min(CHUNK, rows - have)
            with transaction.atomic():
                cursor.execute("SELECT balance_credits FROM credit_wallets WHERE id = %s FOR UPDATE", [wallet_id])
                balance = cursor.fetchone()[0]
                cursor.execute(
                    "INSERT INTO credit_transactions (wallet_id, kind, amount, balance_after, reason, "
                    "request_fingerprint, metadata, created_at) "
                    f"SELECT %s, 'grant', 1, %s + seq, 'bench fill', '', '{{}}', NOW(6) FROM seq_1_to_{batch}",
                    [wallet_id, balance],
                )
                cursor.execute(
                    "UPDATE credit_wallets SET balance_credits = balance_credits + %s WHERE id = %s",
                    [batch, wallet_id],
                )
            have += batch
            print(f"  ledger rows: {have:,} ({time.perf_counter() - started:.0f} s)", flush=True)


def time_calls(fn, count: int) -> dict:
    for _ in range(50):
        fn()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {
        "mean_us": round(statistics.fmean(samples) * 1e6),
        "p50_us": round(samples[len(samples) // 2] * 1e6),
        "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=2000, help="charges timed at each size")
    args = parser.parse_args()
    use_bench_database()
    import logging

    from billing import ledger
    from billing.models import Wallet
    from billing.selectors import wallet_summary
    from users.models import User

    logging.getLogger("billing").setLevel(logging.WARNING)  # no line per charge on the console
    user, _ = User.objects.get_or_create(email="bench-scale@example.com")
    wallet, _ = Wallet.objects.get_or_create(user=user)
    empty_ledger()
    rows = []
    for size in SIZES:
        fill_to(wallet.id, size)
        ledger.grant(user_id=user.id, amount=10**6, reason="bench funds")
        charge = time_calls(lambda: ledger.charge(user_id=user.id, amount=3, agent_id="bench"), args.charges)
        read = time_calls(lambda: wallet_summary(user_id=user.id), args.charges)
        row = {"ledger_rows": size, "charge": charge, "wallet_read": read}
        rows.append(row)
        print(
            f"{size:>9,} rows: charge mean {charge['mean_us']} µs (p50 {charge['p50_us']}, p99 {charge['p99_us']}); "
            f"wallet read mean {read['mean_us']} µs",
            flush=True,
        )
    ratio = round(rows[1]["charge"]["mean_us"] / rows[0]["charge"]["mean_us"], 2)
    lines = [
        *table(
            ["ledger rows", "charge mean µs", "charge p50 µs", "charge p99 µs", "wallet read mean µs"],
            (
                [
                    f"{r['ledger_rows']:,}",
                    r["charge"]["mean_us"],
                    r["charge"]["p50_us"],
                    r["charge"]["p99_us"],
                    r["wallet_read"]["mean_us"],
                ]
                for r in rows
            ),
        ),
        "",
        f"A charge on a 1M-row ledger costs **{ratio:.2f}×** what it costs on a 10k-row ledger.",
    ]
    write("ledger_scale", {"rows": rows, "charge_1m_vs_10k": ratio}, lines)


if __name__ == "__main__":
    main()
