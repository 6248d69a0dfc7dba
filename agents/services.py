from dataclasses import dataclass

from django.db import transaction

from agents.catalogue import DEFAULT_AGENTS, CatalogueEntry
from agents.models import AgentCost


@dataclass(frozen=True)
class SeedReport:
    created: int = 0
    updated: int = 0
    kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "kept": self.kept}


@transaction.atomic
def seed_agent_costs(
    *, reset: bool = False, catalogue: tuple[CatalogueEntry, ...] = DEFAULT_AGENTS, model=AgentCost
) -> SeedReport:
    """Create the catalogue's agents; idempotent.

    An existing agent whose price staff have edited (cost differs from the default it was
    seeded with) keeps that price unless `reset` is true. `model` lets data migrations pass
    their historical model.
    """
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
        changed = (agent.cost_credits, agent.default_cost_credits, agent.name, agent.description) != (
            entry.cost_credits,
            entry.cost_credits,
            entry.name,
            entry.description,
        )
        if changed or (reset and not agent.is_active):
            agent.cost_credits = entry.cost_credits
            agent.default_cost_credits = entry.cost_credits
            agent.name = entry.name
            agent.description = entry.description
            if reset:
                agent.is_active = True
            agent.save()
            updated += 1
    return SeedReport(created=created, updated=updated, kept=kept)
