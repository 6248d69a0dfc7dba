"""gunicorn settings for production: `gunicorn config.wsgi` picks this file up from the project root.

Every value can be overridden with the environment variables named below.
"""

import multiprocessing
import os

from agents import sandbox  # standard library only

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Credits are moved in short DB transactions; synchronous workers, one per core by default
# (agent runs that take long belong on Celery with Prefer: respond-async).
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# Longer than AGENT_RUN_TIMEOUT_SECONDS, so a synchronous run fails cleanly before the worker is killed.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", str(int(os.environ.get("AGENT_RUN_TIMEOUT_SECONDS", "120")) + 30)))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "5000"))
max_requests_jitter = 500
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def post_worker_init(worker):
    """Start this worker's agent-tool process now, so the first run does not wait for it."""
    sandbox.warm()


def child_exit(server, worker):
    """Drop a dead worker's Prometheus samples (multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
