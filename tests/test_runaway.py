"""Runaway runs: one that would take far longer than its time limit and one that would exceed its
memory limit each get their answer within the limit (+ 2 s), are charged nothing, and leave the
process that served them idle: its CPU time grows by less than 0.5 s in the 5 s after the answer.

The serving process is this pytest process answering the HTTP API (the Django test client); the
Celery worker is a real `celery worker -P solo` process (the task runs in its main process) on
Redis db 15 against the test database. The tools run in `agents.sandbox` worker processes, which
are killed (time) or fail their allocation (memory) – and are gone afterwards.
"""

from __future__ import annotations

import os
import random
import signal
import string
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from django.db import connection

from agents import runner, sandbox
from agents.models import AgentRun, RunStatus
from billing import ledger
from billing.models import CreditTransaction, TransactionKind, Wallet
from config.celery import app as celery_app
from tests.conftest import bearer_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("agent_costs")]

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIME_LIMIT = 2  # AGENT_RUN_TIMEOUT_SECONDS
MEMORY_LIMIT = 150  # AGENT_RUN_MAX_MEMORY_MB
WATCH = 5.0  # seconds of CPU watched after the answer
MAX_CPU_AFTER = 0.5
GRANT = 1_000
BODY = {"tool_configuration": {}, "data": {"csv": "a,b\n1,x\n2,y\n"}}
TINY = {"columns": ["a"], "rows": [{"a": "1"}], "source_format": "rows"}
QUIET = ("--without-gossip", "--without-mingle", "--without-heartbeat")


# --- /proc --------------------------------------------------------------------------------------------


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat from field 3 on (state, ppid, …; utime, stime at 11, 12; starttime at 19)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def cpu_seconds(pid: int | str = "self") -> float:
    """The process's own CPU time (all its threads; not its children's), user + system."""
    fields = _stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sandbox_workers_of(pid: int) -> set[str]:
    """Live (non-zombie) sandbox workers whose parent is `pid`, as "pid:starttime"."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := _stat(entry.name)) is None:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            try:
                if b"agents.sandbox" in (entry / "cmdline").read_bytes():
                    found.add(f"{entry.name}:{fields[19]}")
            except OSError:
                continue
    return found


def exists(worker: str) -> bool:
    """The very process (same pid and start time) still exists – a zombie counts: it was not reaped."""
    pid, starttime = worker.split(":")
    fields = _stat(pid)
    return fields is not None and fields[19] == starttime


def cpu_growth_after(pid: int | str) -> float:
    before = cpu_seconds(pid)
    time.sleep(WATCH)
    return cpu_seconds(pid) - before


def wait_for(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}")


def nothing_charged(user, run: AgentRun, balance: int) -> None:
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (balance, 0)
    assert not CreditTransaction.objects.filter(kind=TransactionKind.CHARGE, agent_run_id=run.id).exists()
    assert (run.status, run.credits_charged) == (RunStatus.FAILED, 0)


# --- the serving process --------------------------------------------------------------------------------


@pytest.fixture
def warm_pool() -> str:
    """This process's sandbox pool with exactly one idle worker (started before the clock runs)."""
    sandbox.shutdown()
    sandbox.warm()
    pid = sandbox.run_tool("tests.sandbox_tools:echo", TINY, {}, timeout=30, memory_mb=200)["pid"]
    return f"{pid}:{_stat(pid)[19]}"


@pytest.mark.parametrize("limit", ["time", "memory"])
def test_a_runaway_run_answers_in_time_charges_nothing_and_leaves_the_server_idle(
    user, settings, monkeypatch, warm_pool, limit, figures
):
    """What it catches: without the sandbox's hard time limit the sleepy tool (60 s of CPU) would
    answer after a minute, not within 2 + 2 s; run in a thread of this process instead of a
    killable worker, it would keep burning this process's CPU after a timed-out answer (≥ 4.5 s
    of the 5 s watched); without the memory limit the hog would allocate up to 2 GB (in this
    process if in-process: RSS would grow) and succeed, and be charged; a worker that is only
    abandoned, not killed and reaped, would still be in /proc."""
    settings.AGENT_RUN_TIMEOUT_SECONDS = TIME_LIMIT if limit == "time" else 30
    settings.AGENT_RUN_MAX_MEMORY_MB = MEMORY_LIMIT
    tool = "sleepy" if limit == "time" else "hog"  # 60 s of CPU / allocates 50 MB at a time up to 2 GB
    monkeypatch.setitem(runner.TOOLS, "profile-my-data", f"tests.sandbox_tools:{tool}")
    ledger.grant(user_id=user.id, amount=GRANT, reason="seed")
    client = bearer_client(user)
    assert client.get("/api/agents/runs").status_code == 200  # the views are imported before RSS is read
    rss_before = rss_mb()

    started = time.monotonic()
    response = client.post("/api/profile-my-data", BODY, format="json")
    answered_after = time.monotonic() - started
    cpu_after = cpu_growth_after("self")

    assert response.status_code == 422, response.content
    body = response.json()
    assert body["error_code"] == "AGENT_RUN_FAILED"
    expected = f"took longer than {TIME_LIMIT} s" if limit == "time" else f"memory limit of {MEMORY_LIMIT} MB"
    assert expected in body["detail"] and "No credits were charged" in body["detail"]
    assert answered_after <= (TIME_LIMIT + 2 if limit == "time" else 5), answered_after
    assert cpu_after < MAX_CPU_AFTER, cpu_after
    assert rss_mb() - rss_before < 100  # the memory was the worker's, not ours
    assert not exists(warm_pool), "the runaway's sandbox worker is still there"
    nothing_charged(user, AgentRun.objects.get(pk=body["run_id"]), GRANT)
    figures(
        f"runaway ({limit}) in the serving process: answered after {answered_after:.2f} s, "
        f"its CPU in the {WATCH:g} s after {cpu_after:.2f} s"
    )


# --- the Celery worker ------------------------------------------------------------------------------------


@pytest.fixture
def broker():
    client = redis.Redis.from_url(BROKER_URL)
    client.ping()  # Redis must be there: fail, never skip
    client.flushdb()
    previous = {
        "CELERY_BROKER_URL": celery_app.conf.broker_url,
        "CELERY_TASK_ALWAYS_EAGER": celery_app.conf.task_always_eager,
    }
    celery_app.conf.update(CELERY_BROKER_URL=BROKER_URL, CELERY_TASK_ALWAYS_EAGER=False)
    celery_app._after_fork()  # drop pooled broker connections made for another broker URL
    yield client
    celery_app.conf.update(previous)
    celery_app._after_fork()
    client.flushdb()


@contextmanager
def celery_worker(tmp_path: Path, **env: str):
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-l", "info", *QUIET],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": f"mysql://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                "CELERY_BROKER_URL": BROKER_URL,
                "SECRET_KEY": "worker-test-secret",
                "DEBUG": "false",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: "ready." in log_path.read_text() or process.poll() is not None, timeout=60, what="worker")
            assert process.poll() is None, log_path.read_text()
            process.log_path = log_path
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


def submit(client, agent_id: str, body: dict) -> str:
    response = client.post(f"/api/{agent_id}", body, format="json", HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    return response.json()["run_id"]


def finished(run_id: str, worker) -> AgentRun:
    return wait_for(
        lambda: AgentRun.objects.filter(pk=run_id, status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]).first(),
        timeout=60,
        what=f"run {run_id} to end; worker log:\n{worker.log_path.read_text()[-3000:]}",
    )


def _word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def time_hog() -> tuple[dict, str]:
    """master-my-data: 1,000 rows in one block (the same e-mail), each pair scored on 2,000-letter
    names – ~500,000 slow pairs, tens of seconds of CPU, little memory (measured: still running,
    under 150 MB, after 20 s). Short names would fill the score table past 150 MB within ~2 s and
    race the time limit."""
    rng = random.Random(7)
    rows = [{"name": _word(rng, 2000), "email": "same@example.com"} for _ in range(1000)]
    return {"tool_configuration": {"max_block_size": 5000}, "data": {"rows": rows}}, f"took longer than {TIME_LIMIT} s"


def memory_hog() -> tuple[dict, str]:
    """master-my-data matching 5,000 rows on one e-mail shared by all: 12.5 million pairs from each of
    two blocking passes, whose pair table alone needs ~400 MB (past the pairs cap, which the test
    lifts: the sandbox's limit is what it is about)."""
    rows = [{"email": "same@example.com"} for _ in range(5000)]
    body = {"tool_configuration": {"max_block_size": 5000, "match_columns": ["email"]}, "data": {"rows": rows}}
    return body, f"memory limit of {MEMORY_LIMIT} MB"


@pytest.mark.parametrize("limit", ["time", "memory"])
def test_a_runaway_run_on_the_celery_worker_ends_in_time_charges_nothing_and_leaves_it_idle(
    broker, user, tmp_path, limit, figures, settings
):
    """What it catches: without the sandbox, the worker's own process would run the tool (its
    CPU would keep growing, or it would allocate past the limit and the run would succeed and be
    charged); without the hard time limit, the run would end only at Celery's task time limit
    (32 s here) or when done, not within 2 + 2 s; a sandbox worker that is abandoned rather than
    killed and reaped would still be in /proc. The memory run gets a generous time limit (30 s),
    so its quick failure can only be the memory limit's."""
    timeout = TIME_LIMIT if limit == "time" else 30
    env = {"AGENT_RUN_TIMEOUT_SECONDS": str(timeout), "AGENT_RUN_MAX_MEMORY_MB": str(MEMORY_LIMIT)}
    body, expected = time_hog() if limit == "time" else memory_hog()
    settings.AGENT_MASTER_MAX_PAIRS = 100_000_000
    ledger.grant(user_id=user.id, amount=GRANT, reason="seed")
    client = bearer_client(user)
    with celery_worker(tmp_path, **env) as worker:
        # A first, tiny run: the worker's sandbox pool is warm (one idle worker) before the clock runs.
        warm = finished(submit(client, "profile-my-data", BODY), worker)
        assert warm.status == RunStatus.SUCCEEDED, warm.error
        (sandboxed,) = sandbox_workers_of(worker.pid)
        balance = Wallet.objects.get(user=user).balance_credits

        run_id = submit(client, "master-my-data", body)  # the clock starts once it is queued
        started = time.monotonic()
        run = finished(run_id, worker)
        answered_after = time.monotonic() - started
        cpu_after = cpu_growth_after(worker.pid)
        sandboxed_left = exists(sandboxed)  # while the worker (its parent) lives

        assert worker.poll() is None, worker.log_path.read_text()[-3000:]
    assert expected in run.error, run.error
    # Memory: ~2 s here (10 s allows for a busy machine), far from its 30 s time limit.
    assert answered_after <= (TIME_LIMIT + 2 if limit == "time" else 10), answered_after
    assert cpu_after < MAX_CPU_AFTER, cpu_after
    assert not sandboxed_left, "the runaway's sandbox worker is still there"
    nothing_charged(user, run, balance)
    figures(
        f"runaway ({limit}) on the Celery worker: ended {answered_after:.2f} s after it was queued "
        f"({(run.finished_at - run.started_at).total_seconds():.2f} s after the worker started it), "
        f"worker CPU in the {WATCH:g} s after {cpu_after:.2f} s"
    )
