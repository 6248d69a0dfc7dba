"""Run work on real threads that start together, each with its own DB connection."""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import connection, connections, transaction

from billing.models import Wallet


def in_threads(jobs: list, work, *, threads: int = 16) -> list:
    """Run `work(job)` for every job on `threads` threads released by one barrier."""
    barrier = threading.Barrier(threads)
    chunks = [jobs[i::threads] for i in range(threads)]

    def worker(chunk):
        outcomes = []
        try:
            barrier.wait()
            for job in chunk:
                outcomes.append(work(job))
        finally:
            connection.close()
        return outcomes

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [outcome for chunk in pool.map(worker, chunks) for outcome in chunk]


@contextlib.contextmanager
def wallet_locked_elsewhere(user, *, lock_wait_seconds: int = 1):
    """Another connection holds `user`'s wallet row lock (SELECT … FOR UPDATE) for the body,
    whose own connection waits at most `lock_wait_seconds` for a row lock; restored after."""
    locked, release = threading.Event(), threading.Event()

    def hold_the_wallet_lock():
        try:
            with transaction.atomic():
                Wallet.objects.select_for_update().get(user=user)
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    blocker = threading.Thread(target=hold_the_wallet_lock)
    blocker.start()
    assert locked.wait(10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", [lock_wait_seconds])
        yield
    finally:
        release.set()
        blocker.join()
        connection.close()  # the next use reconnects with the configured lock wait
