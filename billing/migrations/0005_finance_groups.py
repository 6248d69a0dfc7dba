from django.db import migrations


def create_groups(apps, schema_editor):
    from billing.roles import ensure_finance_groups

    ensure_finance_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("users", "0001_initial"),
        ("billing", "0004_finance_permissions"),
        ("agents", "0004_cost_history"),
    ]

    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]
