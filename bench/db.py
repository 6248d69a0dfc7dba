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
