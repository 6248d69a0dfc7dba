"""Celery app for asynchronous agent runs and the hold-expiry schedule.

With CELERY_BROKER_URL unset, tasks run eagerly in-process, so the embedded default
(SQLite, `make run`) works without a broker.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("credit_ledger")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
