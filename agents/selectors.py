"""Read-only lookups of agent prices, on every metered request's path."""

from dataclasses import dataclass

from django.db import connection

from agents.models import AgentCost
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
