"""Benchmark: is a charge's cost flat in the size of the ledger? 10k rows against 1M rows.

    make bench-scale          (or: python -m bench.ledger_scale [--charges N])

On the local MariaDB (database `ledger_bench`): the ledger is emptied, filled to 10,000 rows (one
wallet's consistent history of +1 grants, written in bulk without lots; then one opening lot covers
the balance, as migration 0012 gave every wallet with credits, so the ledger reconciles), the wallet
is granted funds, and `billing.ledger.charge` is timed on it; then the ledger is emptied again,
filled to 1,000,000 rows the same way and timed again, with a wallet read (`wallet_summary`, what
GET /billing/wallet serves) timed alongside. Before each timing the bulk
fill's pages are written out and MariaDB is left to settle, so that the fill's background work is
not timed; calls are timed in alternating rounds and the best round's median is compared.
Results: bench/results/ledger_scale.json and .md.
"""

import argparse
import statistics
import time

from bench.db import empty_ledger, open_history_lot, settle, use_bench_database
from bench.report import table, write

SIZES = (10_000, 1_000_000)
ROUNDS = 5
CHUNK = 100_000


def fill_to(wallet_id: int, rows: int) -> None:
    """Append +1 grants to the wallet until the ledger holds `rows` rows; balance_after stays a chain.
    No lots: `open_history_lot` covers the balance afterwards."""
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
                    f"SELECT %s, 'grant', 1, %s + seq, 'bench fill', '', '{{}}', UTC_TIMESTAMP(6) FROM seq_1_to_{batch}",
                    [wallet_id, balance],
                )
                cursor.execute(
                    "UPDATE credit_wallets SET balance_credits = balance_credits + %s WHERE id = %s",
                    [batch, wallet_id],
                )
            have += batch
            print(f"  ledger rows: {have:,} ({time.perf_counter() - started:.0f} s)", flush=True)


def time_rounds(calls: dict, count: int) -> dict[str, dict]:
    """Time each of `calls` `count` times, in ROUNDS rounds that alternate between them (this
    VM's speed drifts by tens of percent within seconds): mean and p99 over every sample, and
    `best_p50_us`, the lowest round median — the cost with the least outside noise in it."""
    for fn in calls.values():
        for _ in range(50):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, fn in calls.items():
            timed = []
            for _ in range(max(count // ROUNDS, 1)):
                started = time.perf_counter()
                fn()
                timed.append(time.perf_counter() - started)
            medians[name].append(statistics.median(timed))
            samples[name] += timed
    return {
        name: {
            "best_p50_us": round(min(medians[name]) * 1e6),
            "mean_us": round(statistics.fmean(samples[name]) * 1e6),
            "p99_us": round(sorted(samples[name])[int(len(samples[name]) * 0.99)] * 1e6),
        }
        for name in calls
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=2000, help="charges timed at each size")
    args = parser.parse_args()
    use_bench_database()
    import logging

    from django.db import connection

    from billing import ledger
    from billing.models import Wallet
    from billing.selectors import wallet_summary
    from users.models import User

    logging.getLogger("billing").setLevel(logging.WARNING)  # no line per charge on the console
    user, _ = User.objects.get_or_create(email="bench-scale@example.com")
    wallet, _ = Wallet.objects.get_or_create(user=user)
    rows = []
    for size in SIZES:
        # From empty each time: rows added after the wallet's first lot would need lots of their own.
        empty_ledger()
        fill_to(wallet.id, size)
        open_history_lot(wallet.id)
        with connection.cursor() as cursor:
            # Write the bulk fill's dirty pages out now: a real ledger grows over months, not in
            # 20 seconds, and InnoDB would otherwise evict them one by one inside the timing.
            cursor.execute("FLUSH TABLES credit_transactions FOR EXPORT")
            cursor.execute("UNLOCK TABLES")
        settle()
        ledger.grant(user_id=user.id, amount=10**6, reason="bench funds")
        timings = time_rounds(
            {
                "charge": lambda: ledger.charge(user_id=user.id, amount=3, agent_id="bench"),
                "wallet_read": lambda: wallet_summary(user_id=user.id),
            },
            args.charges,
        )
        charge, read = timings["charge"], timings["wallet_read"]
        rows.append({"ledger_rows": size, **timings})
        print(
            f"{size:>9,} rows: charge best-round p50 {charge['best_p50_us']} µs (mean {charge['mean_us']}, "
            f"p99 {charge['p99_us']}); wallet read best-round p50 {read['best_p50_us']} µs (mean {read['mean_us']})",
            flush=True,
        )
    ratio = round(rows[1]["charge"]["best_p50_us"] / rows[0]["charge"]["best_p50_us"], 2)
    read_ratio = round(rows[1]["wallet_read"]["best_p50_us"] / rows[0]["wallet_read"]["best_p50_us"], 2)
    lines = [
        f"{args.charges} charges and as many wallet reads per size, in {ROUNDS} alternating rounds; "
        "the best round's median is the figure compared (this VM's speed drifts within seconds), "
        "mean and p99 are over every call.",
        "",
        *table(
            [
                "ledger rows",
                "charge p50 µs (best round)",
                "charge mean µs",
                "charge p99 µs",
                "wallet read p50 µs (best round)",
                "wallet read mean µs",
            ],
            (
                [
                    f"{r['ledger_rows']:,}",
                    r["charge"]["best_p50_us"],
                    r["charge"]["mean_us"],
                    r["charge"]["p99_us"],
                    r["wallet_read"]["best_p50_us"],
                    r["wallet_read"]["mean_us"],
                ]
                for r in rows
            ),
        ),
        "",
        f"A charge on a 1M-row ledger costs **{ratio:.2f}×** what it costs on a 10k-row ledger "
        f"(a wallet read {read_ratio:.2f}×).",
    ]
    write("ledger_scale", {"rows": rows, "charge_1m_vs_10k": ratio, "wallet_read_1m_vs_10k": read_ratio}, lines)


if __name__ == "__main__":
    main()
