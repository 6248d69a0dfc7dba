"""What the agents' endpoints, admin and commands do: prices and their history, and checking a
data agent's input before a run is paid for."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from agents.catalogue import DEFAULT_AGENTS, CatalogueEntry
from agents.datasets import Dataset, DatasetError, parse_csv, parse_data
from agents.models import MAX_COST_CREDITS, MIN_COST_CREDITS, AgentCost, AgentCostChange
from agents.tools import clean, master, profile
from agents.tools.options import OptionsError
from core.errors import PayloadTooLarge

# Each data agent's option checks (the tools themselves run in `agents.sandbox`).
TOOL_OPTIONS = {"profile-my-data": profile, "clean-my-data": clean, "master-my-data": master}


@dataclass(frozen=True)
class SeedReport:
    created: int = 0
    updated: int = 0
    kept: int = 0


@transaction.atomic
def agent_cost_update(
    *, agent_id: str, cost_credits: int, is_active: bool, actor_id: int | None, reason: str
) -> AgentCost:
    """Change an agent's price and/or active flag, keeping the change in its price history.
    Raises ValidationError for a cost outside MIN_COST_CREDITS–MAX_COST_CREDITS or a missing
    reason; a no-op records nothing."""
    if (
        isinstance(cost_credits, bool)
        or not isinstance(cost_credits, int)
        or not MIN_COST_CREDITS <= cost_credits <= MAX_COST_CREDITS
    ):
        raise ValidationError(
            {"cost_credits": [f"The cost must be a whole number from {MIN_COST_CREDITS} to {MAX_COST_CREDITS}."]}
        )
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


class InvalidRunInput(ValueError):
    """The run's input or options are unusable; `errors` maps each field to its messages."""

    def __init__(self, errors: dict[str, Any]):
        super().__init__(errors)
        self.errors = errors


@dataclass(frozen=True)
class RunInput:
    dataset: Dataset
    configuration: dict[str, Any]


def prepare_run_input(
    *, agent_id: str, tool_configuration: dict[str, Any], data: Any = None, csv_file: UploadedFile | None = None
) -> RunInput:
    """Everything a data agent's run needs, checked before any credits are held: the table (from
    `data` or an uploaded CSV file), the tool's options against it, and — for `master-my-data` — the
    work it would do. `InvalidRunInput` for bad input, `PayloadTooLarge` for input over a limit."""
    try:
        if csv_file is not None:
            if csv_file.size > settings.AGENT_MAX_INPUT_BYTES:
                raise DatasetError(
                    f"The file may be at most {settings.AGENT_MAX_INPUT_BYTES} bytes.", field="file", too_large=True
                )
            try:
                text = csv_file.read().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise DatasetError("The file must be UTF-8 CSV text.", field="file") from exc
            dataset = parse_csv(text, field="file")
        else:
            dataset = parse_data(data)
    except DatasetError as exc:
        if exc.too_large:
            raise PayloadTooLarge(str(exc)) from exc
        raise InvalidRunInput({exc.field: [str(exc)]}) from exc
    tool = TOOL_OPTIONS[agent_id]
    try:
        configuration = tool.parse_options(tool_configuration)
        tool.validate_against(dataset, configuration)
    except OptionsError as exc:
        raise InvalidRunInput({"tool_configuration": exc.errors}) from exc
    if hasattr(tool, "candidate_pairs"):  # a tool whose work grows with pairs of records says how many
        _refuse_too_many_pairs(tool.candidate_pairs(dataset, configuration, at_most=settings.AGENT_MASTER_MAX_PAIRS))
    return RunInput(dataset=dataset, configuration=configuration)


def _refuse_too_many_pairs(pairs: int) -> None:
    """Work that is predictably too big is refused before any credits are held."""
    limit = settings.AGENT_MASTER_MAX_PAIRS
    if pairs > limit:
        raise PayloadTooLarge(
            f"Matching this input could compare up to {pairs:,} record pairs; the limit "
            f"(AGENT_MASTER_MAX_PAIRS) is {limit:,}. Narrow tool_configuration.match_columns, lower "
            "tool_configuration.max_block_size, or split the input into smaller batches.",
            pairs=pairs,
            max_pairs=limit,
        )
