from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction

from agents.catalogue import DEFAULT_AGENTS, CatalogueEntry
from agents.models import AgentCost, AgentCostChange

MIN_COST, MAX_COST = 1, 10_000


@dataclass(frozen=True)
class SeedReport:
    created: int = 0
    updated: int = 0
    kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "kept": self.kept}


@transaction.atomic
def agent_cost_update(
    *, agent_id: str, cost_credits: int, is_active: bool, actor_id: int | None, reason: str
) -> AgentCost:
    """Change an agent's price and/or active flag, keeping the change in its price history.
    Raises ValidationError for a cost outside 1–10,000 or a missing reason; a no-op records nothing."""
    if isinstance(cost_credits, bool) or not isinstance(cost_credits, int) or not MIN_COST <= cost_credits <= MAX_COST:
        raise ValidationError({"cost_credits": [f"The cost must be a whole number from {MIN_COST} to {MAX_COST}."]})
    if not reason or not reason.strip():
        raise ValidationError({"reason": ["Say why the price changes."]})
    agent = AgentCost.objects.select_for_update().get(agent_id=agent_id)
    if (agent.cost_credits, agent.is_active) == (cost_credits, is_active):
        return agent
    AgentCostChange.objects.create(
        agent=agent,
        old_cost_credits=agent.cost_credits,
        new_cost_credits=cost_credits,
        old_is_active=agent.is_active,
        new_is_active=is_active,
        changed_by_id=actor_id,
        reason=reason.strip(),
    )
    agent.cost_credits, agent.is_active = cost_credits, is_active
    agent.save(update_fields=["cost_credits", "is_active", "updated_at"])
    return agent


@transaction.atomic
def seed_agent_costs(
    *,
    reset: bool = False,
    actor_id: int | None = None,
    catalogue: tuple[CatalogueEntry, ...] = DEFAULT_AGENTS,
    model=AgentCost,
) -> SeedReport:
    """Create the catalogue's agents; idempotent.

    An existing agent whose price staff have edited (cost differs from the default it was
    seeded with) keeps that price unless `reset` is true. Price changes are kept in the
    price history (not from data migrations, which pass their historical `model`).
    """
    record_history = model is AgentCost
    created = updated = kept = 0
    existing = {agent.agent_id: agent for agent in model.objects.select_for_update()}
    for entry in catalogue:
        agent = existing.get(entry.agent_id)
        if agent is None:
            model.objects.create(
                agent_id=entry.agent_id,
                name=entry.name,
                description=entry.description,
                cost_credits=entry.cost_credits,
                default_cost_credits=entry.cost_credits,
            )
            created += 1
            continue
        edited = agent.cost_credits != agent.default_cost_credits
        if edited and not reset:
            kept += 1
            continue
        is_active = True if reset else agent.is_active
        target = (entry.cost_credits, entry.cost_credits, entry.name, entry.description, is_active)
        if (agent.cost_credits, agent.default_cost_credits, agent.name, agent.description, agent.is_active) == target:
            continue
        if record_history and (agent.cost_credits, agent.is_active) != (entry.cost_credits, is_active):
            agent_cost_update(
                agent_id=agent.agent_id,
                cost_credits=entry.cost_credits,
                is_active=is_active,
                actor_id=actor_id,
                reason="Reset to the catalogue default" if reset else "Re-seeded catalogue default",
            )
        agent.cost_credits = agent.default_cost_credits = entry.cost_credits
        agent.name, agent.description, agent.is_active = entry.name, entry.description, is_active
        agent.save()
        updated += 1
    return SeedReport(created=created, updated=updated, kept=kept)
