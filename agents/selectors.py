"""Read-only lookups: agent prices (on every metered request's path) and what paid for a run."""

from dataclasses import dataclass

from django.db import connection
from django.db.models import Prefetch, QuerySet, prefetch_related_objects

from agents.models import AgentCost, AgentRun, RunStatus
from billing.models import CreditDraw, CreditTransaction, TransactionKind
from billing.selectors import draws_prefetch
from core.errors import DomainError


class AgentUnavailable(DomainError):
    """No active agent has this id (unknown, or switched off by staff)."""

    error_code = "AGENT_UNAVAILABLE"


@dataclass(frozen=True)
class AgentPrice:
    agent_id: str
    cost_credits: int


_PRICE_SQL = f"SELECT agent_id, cost_credits FROM {AgentCost._meta.db_table} WHERE agent_id = %s AND is_active = %s"


def current_price(agent_id: str) -> AgentPrice | None:
    """The active agent's cost now, or None (unknown or switched off).

    One indexed lookup through a plain cursor: every charge, hold and agent run starts here,
    and building a queryset costs several times the CPU of the query itself (bench/)."""
    with connection.cursor() as cursor:
        cursor.execute(_PRICE_SQL, [agent_id, True])
        row = cursor.fetchone()
    return AgentPrice(agent_id=row[0], cost_credits=row[1]) if row else None


def active_agent(agent_id: str) -> AgentPrice:
    """`current_price`, or `AgentUnavailable` (404 `AGENT_UNAVAILABLE`)."""
    agent = current_price(agent_id)
    if agent is None:
        raise AgentUnavailable(f"The agent {agent_id!r} is not available.")
    return agent


def _charge_rows() -> Prefetch:
    """A run's charge row is the capture of its hold; its draws say which lots paid for the run."""
    return Prefetch(
        "hold__transactions",
        queryset=CreditTransaction.objects.filter(kind=TransactionKind.CHARGE).prefetch_related(draws_prefetch()),
        to_attr="charge_rows",
    )


def with_funding(runs: QuerySet[AgentRun]) -> QuerySet[AgentRun]:
    """Runs with the draws of their charge row (`funding_draws`): three queries for any number of runs."""
    return runs.select_related("hold").prefetch_related(_charge_rows())


def funding_draws(run: AgentRun) -> list[CreditDraw]:
    """The lots that paid for `run` — the draws of its charge row, in burn order; none for a run
    that was not charged (failed, unfinished, or run without billing enforcement)."""
    if run.status != RunStatus.SUCCEEDED or run.hold_id is None:
        return []
    prefetch_related_objects([run], "hold", _charge_rows())  # no query when `with_funding` fetched them
    return [draw for row in run.hold.charge_rows for draw in row.draws.all()]
