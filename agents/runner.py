"""Run an agent so that money follows the run: hold → run → capture, or release on failure."""

import hashlib
import json
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.datasets import Dataset
from agents.models import AgentCost, AgentRun, RunStatus
from agents.tools import clean, master, profile
from billing import ledger
from billing.selectors import wallet_for_user

logger = logging.getLogger("agents")

TOOLS: dict[str, ModuleType] = {
    "profile-my-data": profile,
    "clean-my-data": clean,
    "master-my-data": master,
}


class AgentUnavailable(ledger.LedgerError):
    error_code = "AGENT_UNAVAILABLE"
    status_code = 404


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


def run_agent(
    *,
    user_id: int,
    agent_id: str,
    tool_configuration: dict[str, Any],
    dataset: Dataset,
    idempotency_key: str | None = None,
) -> RunOutcome:
    """Run `agent_id` on `dataset` for the user, paying its cost only if it succeeds.

    The agent's current cost is held before the tool runs (`InsufficientCredits` if the
    wallet is short, nothing written); success captures the hold as one `charge`; any
    exception releases it and the run is `failed`. Idempotent on `idempotency_key`: the
    same key replays the first run without charging again.
    """
    agent = AgentCost.objects.filter(agent_id=agent_id, is_active=True).first()
    if agent is None or agent_id not in TOOLS:
        raise AgentUnavailable(f"The agent {agent_id!r} is not available.")
    fingerprint = _fingerprint(agent_id, tool_configuration, dataset)
    if idempotency_key:
        existing = AgentRun.objects.filter(user_id=user_id, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replay(existing, fingerprint)

    enforced = settings.BILLING_ENFORCEMENT
    held = ledger.hold(user_id=user_id, amount=agent.cost_credits, agent_id=agent_id).hold if enforced else None
    try:
        run = AgentRun.objects.create(
            user_id=user_id,
            agent_id=agent_id,
            status=RunStatus.RUNNING,
            cost_credits=agent.cost_credits,
            hold=held,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            input_rows=len(dataset.rows),
            started_at=timezone.now(),
        )
    except IntegrityError:
        # The same key arrived concurrently: keep the other run, give our hold back.
        if held is not None:
            ledger.release(hold_id=held.id)
        return _replay(AgentRun.objects.get(user_id=user_id, idempotency_key=idempotency_key), fingerprint)

    try:
        result = TOOLS[agent_id].run(dataset, tool_configuration)
    except Exception as exc:
        logger.exception("Agent %s failed for run %s", agent_id, run.id)
        if held is not None:
            ledger.release(hold_id=held.id)
        run.status = RunStatus.FAILED
        run.error = f"{exc.__class__.__name__}: {exc}"[:2000]
        run.balance_after = wallet_for_user(user_id=user_id).balance_credits
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error", "balance_after", "finished_at"])
        return RunOutcome(run)

    with transaction.atomic():
        if held is not None:
            charge = ledger.capture(hold_id=held.id, agent_run_id=run.id)
            run.credits_charged = -charge.transaction.amount
            run.balance_after = charge.balance_after
        else:
            run.balance_after = wallet_for_user(user_id=user_id).balance_credits
        run.status = RunStatus.SUCCEEDED
        run.result = result
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "credits_charged", "balance_after", "result", "finished_at"])
    return RunOutcome(run)


def _replay(run: AgentRun, fingerprint: str) -> RunOutcome:
    if run.request_fingerprint != fingerprint:
        raise ledger.IdempotencyConflict("This Idempotency-Key was already used with a different request.")
    return RunOutcome(run, replayed=True)
