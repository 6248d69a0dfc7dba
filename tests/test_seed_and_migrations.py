from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from agents.catalogue import DEFAULT_AGENTS
from agents.models import AgentCost


@pytest.mark.django_db(transaction=True)
def test_the_data_migration_seeds_the_22_agents():
    AgentCost.objects.all().delete()
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([("agents", "0001_initial")])  # also unapplies what depends on later ones
        executor.loader.build_graph()
        executor.migrate([("agents", "0002_seed_agent_costs")])
        agents = {a.agent_id: a.cost_credits for a in AgentCost.objects.all()}
    finally:
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())

    assert len(agents) == 22
    assert {"profile-my-data", "clean-my-data", "master-my-data"} <= agents.keys()
    assert all(20 <= cost <= 150 for cost in agents.values())


def test_the_catalogue_has_22_distinct_agents_priced_20_to_150():
    assert len({a.agent_id for a in DEFAULT_AGENTS}) == 22
    assert all(20 <= a.cost_credits <= 150 and a.name and a.description for a in DEFAULT_AGENTS)


@pytest.mark.django_db
def test_seed_command_is_idempotent_and_keeps_edited_prices(agent_costs):
    AgentCost.objects.filter(agent_id="profile-my-data").update(cost_credits=77)
    out = StringIO()
    call_command("seed_agent_costs", stdout=out)
    assert "0 created, 0 updated, 1 edited price(s) kept" in out.getvalue()
    assert AgentCost.objects.get(agent_id="profile-my-data").cost_credits == 77

    call_command("seed_agent_costs", "--reset", stdout=out)
    assert AgentCost.objects.get(agent_id="profile-my-data").cost_credits == 25
    assert AgentCost.objects.count() == 22


@pytest.mark.django_db
def test_there_are_no_missing_migrations():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_sqlmigrate_shows_the_ledger_constraints():
    out = StringIO()
    call_command("sqlmigrate", "billing", "0001", stdout=out)
    sql = out.getvalue()
    for name in (
        "wallet_balance_non_negative",
        "wallet_held_non_negative",
        "wallet_held_within_balance",
        "uniq_txn_wallet_idempotency_key",
        "txn_wallet_history_idx",
        "txn_agent_usage_idx",
        "txn_payment_intent_idx",
        "txn_checkout_session_idx",
    ):
        assert name in sql
    for table in ("credit_wallets", "credit_transactions", "credit_holds", "stripe_webhook_events"):
        assert f"CREATE TABLE `{table}`" in sql
