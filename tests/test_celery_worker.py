"""A real Celery worker process on the local Redis, against the test database on MariaDB."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
import redis
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from agents import runner
from agents.datasets import Dataset
from agents.models import AgentRun, RunStatus
from billing import ledger
from billing.models import CreditHold, CreditTransaction, HoldStatus, TransactionKind, Wallet
from config.celery import app as celery_app
from tests.conftest import bearer_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("agent_costs")]

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")


def wait_for(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}")


@pytest.fixture
def broker():
    client = redis.Redis.from_url(BROKER_URL)
    client.ping()  # Redis must be there: fail, never skip
    client.flushdb()
    # With namespace="CELERY" the prefixed names take precedence over the plain ones.
    previous = {
        "CELERY_BROKER_URL": celery_app.conf.broker_url,
        "CELERY_TASK_ALWAYS_EAGER": celery_app.conf.task_always_eager,
    }
    celery_app.conf.update(CELERY_BROKER_URL=BROKER_URL, CELERY_TASK_ALWAYS_EAGER=False)
    _forget_connections()
    yield client
    celery_app.conf.update(previous)
    _forget_connections()
    client.flushdb()


def _forget_connections():
    """Drop pooled broker connections made for another broker URL (as Celery does after a fork)."""
    celery_app._after_fork()


@pytest.fixture
def worker(broker, tmp_path):
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    env = {
        **os.environ,
        "DATABASE_URL": f"mysql://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": BROKER_URL,
        "SECRET_KEY": "worker-test-secret",
        "DEBUG": "false",
    }
    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-P",
            "solo",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: "ready." in log_path.read_text() or process.poll() is not None, timeout=60, what="worker start")
    assert process.poll() is None, log_path.read_text()
    process.log_path = log_path
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    log.close()


def test_a_worker_runs_an_async_run_to_success(worker, user):
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    body = {"tool_configuration": {}, "data": {"csv": "name,email\nAda,ada@example.com\nAda,ada@example.com\n"}}

    response = bearer_client(user).post("/api/profile-my-data", body, format="json", HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    run_id = response.json()["run_id"]

    run = wait_for(
        lambda: AgentRun.objects.filter(pk=run_id, status=RunStatus.SUCCEEDED).first(),
        timeout=60,
        what=f"the run to succeed; worker log:\n{worker.log_path.read_text()[-3000:]}",
    )
    assert run.result["duplicate_rows"] == 1 and run.credits_charged == 25
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (75, 0)
    assert CreditTransaction.objects.filter(kind=TransactionKind.CHARGE, agent_run_id=run.pk).count() == 1


def test_a_killed_worker_leaves_a_hold_that_expire_holds_releases(worker, user, settings):
    settings.BILLING_HOLD_TTL = timedelta(seconds=5)
    ledger.grant(user_id=user.id, amount=100, reason="seed")
    rows = [
        {"name": f"Person {i % 9000}", "phone": f"(555) {i % 900 + 100}-{i % 9000 + 1000}", "amount": f"${i},00"}
        for i in range(150_000)
    ]  # long enough (seconds) to be killed mid-run
    outcome = runner.submit_run(
        user_id=user.id,
        agent_id="clean-my-data",
        tool_configuration={
            "trim_whitespace": True,
            "blank_as_null": True,
            "case": {},
            "standardize": "auto",
            "phone_region": "US",
            "coerce_types": True,
            "missing": {},
            "drop_duplicates": True,
        },
        dataset=Dataset(columns=["name", "phone", "amount"], rows=rows, source_format="rows"),
        run_async=True,
    )
    run_id = outcome.run.pk
    wait_for(
        lambda: AgentRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).exists(),
        timeout=60,
        what="the worker to start the run",
    )
    time.sleep(0.3)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)

    run = AgentRun.objects.get(pk=run_id)
    hold = CreditHold.objects.get(pk=run.hold_id)
    assert run.status == RunStatus.RUNNING and hold.status == HoldStatus.PENDING
    assert Wallet.objects.get(user=user).held_credits == 40

    wait_for(lambda: timezone.now() > hold.expires_at, timeout=10, what="the hold to pass its expiry")
    out = StringIO()
    call_command("expire_holds", stdout=out)

    assert "Expired 1 hold(s)." in out.getvalue()
    run.refresh_from_db()
    hold.refresh_from_db()
    assert (run.status, hold.status) == (RunStatus.EXPIRED, HoldStatus.EXPIRED)
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (100, 0)
    assert not CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()
