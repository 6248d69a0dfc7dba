"""Run an agent so that money follows the run: hold → run → capture, or release.

- `submit_run` validates nothing (the API already did), holds the agent's current cost
  (402 if short, nothing written), records the run and executes it now or, when asked for
  an asynchronous run, hands it to a Celery worker.
- `execute_run` runs the tool under a time limit. Success captures the hold as one `charge`
  row, under the run's row lock; any exception or timeout releases it. A hold that expired
  meanwhile (e.g. `expire_holds` after a worker crash) is never captured: the run is `expired`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.utils import timezone

from agents.datasets import Dataset
from agents.models import AgentRun, RunStatus, pack, unpack
from agents.selectors import AgentUnavailable, active_agent
from agents.tools import clean, master, profile
from billing import ledger
from billing.models import CreditHold, HoldStatus
from billing.selectors import wallet_for_user
from billing.signals import hold_expired

logger = logging.getLogger("agents")

TOOLS: dict[str, ModuleType] = {
    "profile-my-data": profile,
    "clean-my-data": clean,
    "master-my-data": master,
}


class RunTimedOut(Exception):
    pass


@dataclass(frozen=True)
class RunOutcome:
    run: AgentRun
    replayed: bool = False


def _fingerprint(agent_id: str, tool_configuration: dict, dataset: Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([agent_id, tool_configuration, dataset.columns], sort_keys=True, default=str).encode())
    for row in dataset.rows:
        digest.update(json.dumps([row[c] for c in dataset.columns], default=str).encode())
    return digest.hexdigest()


def submit_run(
    *,
    user_id: int,
    agent_id: str,
    tool_configuration: dict[str, Any],
    dataset: Dataset,
    idempotency_key: str | None = None,
    run_async: bool = False,
) -> RunOutcome:
    """Hold the agent's current cost and run it (now, or on a worker when `run_async`).

    `InsufficientCredits` if the wallet is short, with nothing written. Idempotent on
    `idempotency_key`: the same key returns the first run without holding again; the same
    key with another request raises `IdempotencyConflict`.
    """
    if agent_id not in TOOLS:
        raise AgentUnavailable(f"The agent {agent_id!r} is not available.")
    agent = active_agent(agent_id)
    fingerprint = _fingerprint(agent_id, tool_configuration, dataset)
    if idempotency_key:
        existing = AgentRun.objects.filter(user_id=user_id, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replay(existing, fingerprint)

    held = (
        ledger.hold(user_id=user_id, amount=agent.cost_credits, agent_id=agent_id).hold
        if settings.BILLING_ENFORCEMENT
        else None
    )
    try:
        run = AgentRun.objects.create(
            user_id=user_id,
            agent_id=agent_id,
            status=RunStatus.QUEUED if run_async else RunStatus.RUNNING,
            cost_credits=agent.cost_credits,
            hold=held,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            configuration=tool_configuration,
            input_rows=len(dataset.rows),
            input_blob=pack(_dataset_payload(dataset)) if run_async else None,
            started_at=None if run_async else timezone.now(),
        )
    except IntegrityError:
        # The same key arrived concurrently: keep the other run, give our hold back.
        if held is not None:
            ledger.release(hold_id=held.id)
        return _replay(AgentRun.objects.get(user_id=user_id, idempotency_key=idempotency_key), fingerprint)

    if run_async:
        from agents.tasks import execute_run_task

        transaction.on_commit(lambda: execute_run_task.delay(str(run.id)))
        return RunOutcome(run)
    return RunOutcome(execute_run(run=run, dataset=dataset))


def execute_stored_run(*, run_id: str) -> AgentRun | None:
    """Worker entry point: run a queued (or crash-interrupted) run from its stored input."""
    run = AgentRun.objects.filter(pk=run_id).first()
    if run is None or run.is_finished or run.input_blob is None:
        return run
    if run.hold_id and not CreditHold.objects.filter(pk=run.hold_id, status=HoldStatus.PENDING).exists():
        _finish(run, RunStatus.EXPIRED, error="Its credit hold expired before it could run.")
        return run
    AgentRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, started_at=timezone.now())
    run.status = RunStatus.RUNNING
    return execute_run(run=run, dataset=_dataset_from_payload(unpack(run.input_blob)))


def execute_run(*, run: AgentRun, dataset: Dataset) -> AgentRun:
    try:
        result = _run_with_time_limit(run.agent_id, dataset, run.configuration)
    except Exception as exc:
        if isinstance(exc, RunTimedOut):
            logger.warning("Agent %s run %s timed out", run.agent_id, run.id)
        else:
            logger.exception("Agent %s failed for run %s", run.agent_id, run.id)
        if run.hold_id:
            with contextlib.suppress(ledger.HoldNotPending):  # already expired and released
                ledger.release(hold_id=run.hold_id)
        _finish(run, RunStatus.FAILED, error=f"{exc.__class__.__name__}: {exc}"[:2000])
        return run

    with transaction.atomic():
        locked = AgentRun.objects.select_for_update().get(pk=run.pk)
        if locked.is_finished:
            return locked  # expired meanwhile: never charge for it
        try:
            charged = ledger.capture(hold_id=run.hold_id, agent_run_id=run.id) if run.hold_id else None
        except ledger.HoldNotPending:
            charged = None
            expired = True
        else:
            expired = False
    if expired:
        _finish(run, RunStatus.EXPIRED, error="Its credit hold expired before the run finished; nothing charged.")
        return run
    run.credits_charged = -charged.transaction.amount if charged else 0
    _finish(
        run,
        RunStatus.SUCCEEDED,
        result=result,
        balance_after=charged.balance_after if charged else None,
    )
    return run


def _run_with_time_limit(agent_id: str, dataset: Dataset, configuration: dict) -> dict:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"agent-{agent_id}")
    future = pool.submit(TOOLS[agent_id].run, dataset, configuration)
    try:
        return future.result(timeout=settings.AGENT_RUN_TIMEOUT_SECONDS)
    except FutureTimeout:
        raise RunTimedOut(f"The run took longer than {settings.AGENT_RUN_TIMEOUT_SECONDS} s.") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _summary(result: dict | None) -> dict | None:
    if result is None:
        return None
    return result.get("summary") or {k: v for k, v in result.items() if isinstance(v, int | float | str)}


def _finish(run: AgentRun, status: str, *, error: str = "", result: dict | None = None, balance_after=None) -> None:
    run.status = status
    run.error = error
    run.result_blob = pack(result) if result is not None else None
    run.result_summary = _summary(result)
    run.balance_after = (
        balance_after if balance_after is not None else wallet_for_user(user_id=run.user_id).balance_credits
    )
    run.input_blob = None
    run.finished_at = timezone.now()
    run.save(
        update_fields=[
            "status",
            "error",
            "result_blob",
            "result_summary",
            "credits_charged",
            "balance_after",
            "input_blob",
            "finished_at",
        ]
    )


def _replay(run: AgentRun, fingerprint: str) -> RunOutcome:
    if run.request_fingerprint != fingerprint:
        raise ledger.IdempotencyConflict("This Idempotency-Key was already used with a different request.")
    return RunOutcome(run, replayed=True)


def _dataset_payload(dataset: Dataset) -> dict:
    return {"columns": dataset.columns, "rows": dataset.rows, "source_format": dataset.source_format}


def _dataset_from_payload(payload: dict) -> Dataset:
    return Dataset(columns=payload["columns"], rows=payload["rows"], source_format=payload["source_format"])


@receiver(hold_expired)
def _expire_runs_of_hold(sender, hold: CreditHold, **kwargs) -> None:
    """A run whose hold expired (its worker died or it waited too long) ends as `expired`."""
    AgentRun.objects.filter(hold=hold, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(
        status=RunStatus.EXPIRED,
        error="Its credit hold expired; nothing was charged.",
        input_blob=None,
        finished_at=timezone.now(),
    )
