"""Benchmark: the admin's CSV export of 100,000 ledger rows — time and extra memory.

    make bench-export        (or: python -m bench.export_csv [--rows N])

Fills a bench database on the local MariaDB with N ledger rows (once), then streams the
export through the real admin view and samples the process's resident memory while it
runs. Target: under 200 MB extra. Figures go to bench/results/export_csv.json.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.db import open_history_lot, use_bench_database

RESULTS = Path(__file__).parent / "results"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def ensure_rows(rows: int) -> None:
    from billing.models import CreditTransaction, Wallet
    from users.models import User

    user, _ = User.objects.get_or_create(email="export-bench@example.com")
    wallet, _ = Wallet.objects.get_or_create(user=user)
    have = CreditTransaction.objects.filter(wallet=wallet).count()
    if have < rows:
        insert_rows(wallet, have, rows)
    # The rows came without lots: one opening lot, created after them, covers the balance.
    open_history_lot(wallet.id)


def insert_rows(wallet, have: int, rows: int) -> None:
    """Rows `have`…`rows` of the wallet's history (grants of 50, charges of 10), in bulk."""
    from django.db import connection
    from django.utils import timezone

    from billing.models import Wallet

    print(f"Inserting {rows - have:,} ledger rows…", flush=True)
    balance = wallet.balance_credits
    now = timezone.now()
    batch = []
    sql = (
        "INSERT INTO credit_transactions (wallet_id, kind, amount, balance_after, agent_id, reason, "
        "request_fingerprint, metadata, created_at) VALUES (%s, %s, %s, %s, %s, %s, '', '{}', %s)"
    )
    with connection.cursor() as cursor:
        for n in range(have, rows):
            amount = 50 if n % 3 == 0 else -10
            if balance + amount < 0:
                amount = 50
            balance += amount
            kind = "grant" if amount > 0 else "charge"
            batch.append(
                (
                    wallet.id,
                    kind,
                    amount,
                    balance,
                    None if amount > 0 else "profile-my-data",
                    "bench row" if amount > 0 else "",
                    now,
                )
            )
            if len(batch) == 5000:
                cursor.executemany(sql, batch)
                batch.clear()
                print(f"  {n + 1:,}/{rows:,}", flush=True)
        if batch:
            cursor.executemany(sql, batch)
    Wallet.objects.filter(pk=wallet.pk).update(balance_credits=balance)


def measure() -> dict:
    from django.contrib.admin.sites import site
    from django.test import RequestFactory

    from billing.models import CreditTransaction
    from users.models import User

    admin_user, _ = User.objects.get_or_create(
        email="export-admin@example.com", defaults={"is_staff": True, "is_superuser": True}
    )
    request = RequestFactory().get("/admin/billing/credittransaction/export/")
    request.user = admin_user
    model_admin = site._registry[CreditTransaction]

    baseline = rss_mb()
    peak = baseline
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    response = model_admin.export_view(request)
    size = lines = 0
    for chunk in response.streaming_content:
        size += len(chunk)
        lines += chunk.count("\n") if isinstance(chunk, str) else chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "rows_exported": lines - 1,
        "seconds": round(elapsed, 2),
        "rows_per_second": round((lines - 1) / elapsed),
        "csv_mb": round(size / 1e6, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "extra_memory_mb": round(peak - baseline, 1),
        "target_extra_memory_mb": 200,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_bench_database()
    if not args.measure_only:
        ensure_rows(args.rows)
        # Measure in a fresh process, so memory freed after the inserts cannot hide the export's.
        raise SystemExit(subprocess.call([sys.executable, "-m", "bench.export_csv", "--measure-only"]))
    figures = measure()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_csv.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"CSV export of {figures['rows_exported']:,} ledger rows through the admin")
    for key, value in figures.items():
        print(f"  {key:<24} {value}")
    if figures["extra_memory_mb"] >= figures["target_extra_memory_mb"]:
        raise SystemExit("Extra memory above the 200 MB target")


if __name__ == "__main__":
    main()
