"""Celery app for asynchronous agent runs and the hold-expiry schedule.

With CELERY_BROKER_URL unset, tasks run eagerly in-process, so the embedded default
(SQLite, `make run`) works without a broker.
"""

import os

from celery import Celery
from celery.signals import worker_process_init

from agents import sandbox  # standard library only: safe before Django is set up

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("credit_ledger")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _warm_agent_sandbox(**kwargs) -> None:
    """Each prefork child starts its agent-tool process before its first run."""
    sandbox.warm()
