"""Run an agent so that money follows the run: hold → isolated run → capture, or release.

Each arrow below is one commit, so after a crash at any point a run is in exactly one of two
states: a pending hold with an unfinished run, or a settled hold with a finished run whose
`credits_charged` equals its ledger row.

- `start_run`: the hold and the run's row (`queued` or `running`), one plan (`ledger.hold(then=…)`).
- `execute_run`: the tool runs in its own OS process (`agents.sandbox`) under hard time and
  memory limits; while it runs, the hold's expiry is renewed (a lease), so a long healthy run
  is never expired while a dead worker's hold still expires within `BILLING_HOLD_TTL_SECONDS`.
- success: the capture and the run's receipt (`succeeded`, `credits_charged`, `balance_after`,
  result), one plan (`ledger.capture(then=…)`).
- failure: the release and the run's end (`failed`, the reason), one plan (`ledger.release(then=…)`).
- expiry: `expire_holds` releases the hold and ends the run (`expired`) in one transaction
  (`_expire_runs_of_hold`).

Lock order is the ledger's: wallet → hold → run. The run's own row is never locked first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from celery import current_app as celery_app
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.dispatch import receiver
from django.utils import timezone

from agents import sandbox
from agents.datasets import Dataset
from agents.models import AgentRun, RunStatus, pack, unpack
from agents.selectors import AgentUnavailable, active_agent
from billing import events, ledger
from billing.ledger.sql import PlanStopped, Step, run_plan
from billing.models import CreditHold, CreditTransaction, HoldStatus, TransactionKind
from billing.signals import hold_expired

logger = logging.getLogger("agents")

# The tools, by the module the sandboxed worker imports (each has `run(dataset, config)`).
TOOLS: dict[str, str] = {
    "profile-my-data": "agents.tools.profile",
    "clean-my-data": "agents.tools.clean",
    "master-my-data": "agents.tools.master",
}
_UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


@dataclass(frozen=True)
class RunOutcome:
    run: AgentRun
    replayed: bool = False


def _fingerprint(agent_id: str, tool_configuration: dict, dataset: Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([agent_id, tool_configuration, dataset.columns], sort_keys=True, default=str).encode())
    encode = json.JSONEncoder(default=str).encode  # json.dumps(…, default=str) without a new encoder per row
    columns = [dataset.values[c] for c in dataset.columns]
    for record in zip(*columns, strict=True) if columns else ((),) * dataset.row_count:
        digest.update(encode(record).encode())
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
    fingerprint = _fingerprint(agent_id, tool_configuration, dataset)
    if idempotency_key:
        existing = AgentRun.objects.filter(user_id=user_id, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replay(existing, fingerprint)
    try:
        run = start_run(
            user_id=user_id,
            agent_id=agent_id,
            configuration=tool_configuration,
            input_rows=dataset.row_count,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            input_payload=_dataset_payload(dataset) if run_async else None,
        )
    except IntegrityError:
        if not idempotency_key:
            raise
        # The same key arrived concurrently: its run (and hold) won; ours was never written.
        return _replay(AgentRun.objects.get(user_id=user_id, idempotency_key=idempotency_key), fingerprint)

    if run_async:
        # The task is found by name: `agents.tasks` imports this module.
        transaction.on_commit(lambda: celery_app.tasks["agents.execute_run"].delay(str(run.id)))
        return RunOutcome(run)
    return RunOutcome(execute_run(run=run, dataset=dataset))


def start_run(
    *,
    user_id: int,
    agent_id: str,
    configuration: dict[str, Any],
    input_rows: int,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    input_payload: dict | None = None,
) -> AgentRun:
    """Hold the agent's current cost and write the run's row, in one commit. A queued run
    (`input_payload` given) keeps its input until it ends."""
    if agent_id not in TOOLS:
        raise AgentUnavailable(f"The agent {agent_id!r} is not available.")
    agent = active_agent(agent_id)
    queued = input_payload is not None
    run = AgentRun(
        id=uuid.uuid4(),
        user_id=user_id,
        agent_id=agent_id,
        status=RunStatus.QUEUED if queued else RunStatus.RUNNING,
        cost_credits=agent.cost_credits,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        configuration=configuration,
        input_rows=input_rows,
        input_blob=pack(input_payload) if queued else None,
        started_at=None if queued else timezone.now(),
    )
    if settings.BILLING_ENFORCEMENT:
        held = ledger.hold(
            user_id=user_id,
            amount=agent.cost_credits,
            agent_id=agent_id,
            agent_run_id=run.id,
            then=[_insert_run(run, hold_of_run=True)],
        ).hold
        run.hold_id = held.id
    else:
        ledger.run_replayable(lambda answer_lost: _insert_alone(run, answer_lost=answer_lost))
    run._state.adding, run._state.db = False, connection.alias
    return run


def _insert_run(run: AgentRun, *, hold_of_run: bool) -> Step:
    """The run's INSERT; its `hold_id` is the hold written just before in the same plan."""
    columns, values, params = [], [], []
    for field in AgentRun._meta.concrete_fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.attname == "hold_id" and hold_of_run:
            values.append("(SELECT id FROM credit_holds WHERE agent_run_id = %s)")
            params.append(run.id.hex)
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(field.pre_save(run, add=True), connection=connection))
    return Step(f"INSERT INTO {AgentRun._meta.db_table} ({', '.join(columns)}) VALUES ({', '.join(values)})", params)


def _end_run(
    run: AgentRun, *, status: str, credits_charged: int = 0, result: dict | None = None, error: str = ""
) -> Step:
    """The run's final UPDATE, only from queued/running; `balance_after` is the wallet's balance
    in the same transaction."""
    now = timezone.now()
    run.status, run.credits_charged, run.error, run.finished_at = status, credits_charged, error, now
    run.result_blob = pack(result) if result is not None else None
    run.result_summary = _summary(result)
    run.input_blob = None
    prep = {
        name: AgentRun._meta.get_field(name).get_db_prep_save(getattr(run, name), connection=connection)
        for name in ("result_blob", "result_summary", "finished_at")
    }
    return Step(
        f"UPDATE {AgentRun._meta.db_table} SET status = %s, credits_charged = %s, "
        "balance_after = (SELECT balance_credits FROM credit_wallets WHERE user_id = %s), "
        "result_blob = %s, result_summary = %s, error = %s, input_blob = NULL, finished_at = %s "
        "WHERE id = %s AND status IN (%s, %s)",
        [
            status,
            credits_charged,
            run.user_id,
            prep["result_blob"],
            prep["result_summary"],
            error,
            prep["finished_at"],
            run.id.hex,
            *_UNFINISHED,
        ],
    )


def execute_stored_run(*, run_id: str) -> AgentRun | None:
    """Worker entry point: run a queued (or crash-interrupted) run from its stored input.

    A run whose hold was settled meanwhile is finished to match it (never run, never charged
    twice): this only happens to rows written before runs and holds committed together."""
    run = AgentRun.objects.filter(pk=run_id).first()
    if run is None or run.is_finished:
        return run
    if run.hold_id and (settled := _settled_hold(run)):
        return settled
    if run.input_blob is None:
        return run
    AgentRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=timezone.now()
    )
    run.status = RunStatus.RUNNING
    return execute_run(run=run, dataset=_dataset_from_payload(unpack(run.input_blob)))


def _settled_hold(run: AgentRun) -> AgentRun | None:
    hold = CreditHold.objects.get(pk=run.hold_id)
    if hold.status == HoldStatus.PENDING:
        return None
    charge = CreditTransaction.objects.filter(hold_id=hold.id, kind=TransactionKind.CHARGE).first()
    if charge is not None:
        step = _end_run(run, status=RunStatus.SUCCEEDED, credits_charged=-charge.amount)
    else:
        step = _end_run(run, status=RunStatus.EXPIRED, error="Its credit hold was settled before it could run.")
    _end_alone(step)
    run.refresh_from_db()
    return run


def execute_run(*, run: AgentRun, dataset: Dataset) -> AgentRun:
    """Run the tool in the sandbox, then capture (success) or release (failure) together with
    the run's final state."""
    try:
        result = sandbox.run_tool(
            TOOLS[run.agent_id],
            _dataset_payload(dataset),
            run.configuration,
            timeout=settings.AGENT_RUN_TIMEOUT_SECONDS,
            memory_mb=settings.AGENT_RUN_MAX_MEMORY_MB,
            on_wait=_lease(run),
            wait_interval=_lease_interval(),
        )
    except sandbox.ToolError as exc:
        logger.warning("Agent %s run %s failed: %s", run.agent_id, run.id, exc)
        return _fail(run, f"{exc.__class__.__name__}: {exc}"[:2000])
    return _succeed(run, result)


def _lease_interval() -> float:
    return max(settings.BILLING_HOLD_TTL.total_seconds() / 3, 0.2)


def _lease(run: AgentRun):
    """While the tool runs, keep the hold from expiring: a dead worker stops renewing it."""
    if not run.hold_id:
        return None

    def renew() -> None:
        try:
            ledger.extend_hold(hold_id=run.hold_id, until=timezone.now() + settings.BILLING_HOLD_TTL)
        except DatabaseError:
            # The next beat tries again; if none succeeds the hold expires and the run with it.
            logger.warning("Could not renew the hold of run %s", run.id, exc_info=True)

    return renew


def _succeed(run: AgentRun, result: dict) -> AgentRun:
    if not run.hold_id:
        return _settle_without_hold(run, _end_run(run, status=RunStatus.SUCCEEDED, result=result))
    receipt = _end_run(run, status=RunStatus.SUCCEEDED, credits_charged=run.cost_credits, result=result)
    told = _event(run, "agent_run.succeeded", credits_charged=run.cost_credits)
    try:
        charged = ledger.capture(hold_id=run.hold_id, agent_run_id=run.id, then=[receipt, *told])
    except (ledger.HoldNotPending, PlanStopped):
        # Expired meanwhile (the run ended with its hold) or already settled: never charged here.
        run.refresh_from_db()
        return run
    run.credits_charged = -charged.transaction.amount
    run.balance_after = charged.balance_after
    return run


def _fail(run: AgentRun, error: str) -> AgentRun:
    ending = _end_run(run, status=RunStatus.FAILED, error=error)
    if not run.hold_id:
        return _settle_without_hold(run, ending)
    told = _event(run, "agent_run.failed", credits_charged=0, error=error)
    with contextlib.suppress(ledger.HoldNotPending, PlanStopped):  # expired meanwhile, and the run with it
        ledger.release(hold_id=run.hold_id, then=[ending, *told])
    run.refresh_from_db()
    return run


def _event(run: AgentRun, event_type: str, **data) -> list[Step]:
    """The run's event for the product's backend, as statements committed with its end (and
    sent by the delivery sweep: queuing it here would cost the run a round trip)."""
    return events.emit_steps(
        event_type,
        {"run_id": str(run.id), "agent_id": run.agent_id, "user_id": run.user_id, **data},
        user_id=run.user_id,
    )


def _settle_without_hold(run: AgentRun, ending: Step) -> AgentRun:
    _end_alone(ending)
    run.refresh_from_db()
    return run


def _insert_alone(run: AgentRun, *, answer_lost: bool) -> None:
    """The run's row, written alone (no hold). Run again after a lost answer: the id is the
    call's own, so a row already there is its first run's."""
    try:
        run_plan([_insert_run(run, hold_of_run=False)])
    except IntegrityError:
        if not (answer_lost and AgentRun.objects.filter(pk=run.id).exists()):
            raise


def _end_alone(ending: Step) -> None:
    """A run's end without a hold to settle. Its UPDATE changes only a run still queued or
    running, so it is simply run again after a lost answer; one that changes nothing means the
    run ended meanwhile (or in the first run)."""
    with contextlib.suppress(PlanStopped):
        ledger.run_replayable(lambda _answer_lost: run_plan([ending]))


def _summary(result: dict | None) -> dict | None:
    if result is None:
        return None
    return result.get("summary") or {k: v for k, v in result.items() if isinstance(v, int | float | str)}


def _replay(run: AgentRun, fingerprint: str) -> RunOutcome:
    if run.request_fingerprint != fingerprint:
        raise ledger.IdempotencyConflict("This Idempotency-Key was already used with a different request.")
    return RunOutcome(run, replayed=True)


def _dataset_payload(dataset: Dataset) -> dict:
    return dataset.to_message()


def _dataset_from_payload(payload: dict) -> Dataset:
    return Dataset.from_message(payload)


@receiver(hold_expired)
def _expire_runs_of_hold(sender, hold: CreditHold, **kwargs) -> None:
    """A run whose hold expired (its worker died or it waited too long) ends as `expired`,
    in the transaction that released the hold."""
    AgentRun.objects.filter(hold=hold, status__in=_UNFINISHED).update(
        status=RunStatus.EXPIRED,
        error="Its credit hold expired; nothing was charged.",
        input_blob=None,
        finished_at=timezone.now(),
    )
