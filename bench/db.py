"""A MariaDB database of its own for benchmarks (never the app's or the tests')."""

import os

BENCH_DATABASE = os.environ.get("BENCH_DATABASE", "ledger_bench")
SERVER = {"host": "127.0.0.1", "port": 3306, "user": "root", "passwd": ""}


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
