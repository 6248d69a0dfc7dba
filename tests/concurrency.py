"""Run work on real threads that start together, each with its own DB connection."""

import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import connection


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
