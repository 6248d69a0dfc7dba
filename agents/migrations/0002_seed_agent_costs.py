from django.db import migrations


def seed(apps, schema_editor):
    from agents.services import seed_agent_costs

    seed_agent_costs(model=apps.get_model("agents", "AgentCost"))


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
