"""A lot's `is_open` (credits left), kept by the database, and the wallet's open lots found by it:
an index over `remaining_credits` itself was rewritten by every charge. The new index is created
before the old one is dropped (the wallet's foreign key needs one of them at every moment), and
the old one dropped by itself: Django's RemoveIndex would add a (wallet_id) index for the foreign
key on MariaDB, which the new index already serves."""

from django.db import migrations, models


def drop_old_index(apps, schema_editor):
    on_table = " ON credit_lots" if schema_editor.connection.vendor == "mysql" else ""
    schema_editor.execute(f"DROP INDEX lot_wallet_open_idx{on_table}")


def create_old_index(apps, schema_editor):
    schema_editor.execute("CREATE INDEX lot_wallet_open_idx ON credit_lots (wallet_id, remaining_credits)")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0016_auto_recharge_and_alerts"),
    ]

    operations = [
        migrations.AddField(
            model_name="creditlot",
            name="is_open",
            field=models.GeneratedField(
                db_persist=True,
                expression=models.Case(
                    models.When(remaining_credits__gt=0, then=models.Value(True)), default=models.Value(False)
                ),
                output_field=models.BooleanField(),
            ),
        ),
        migrations.AddIndex(
            model_name="creditlot",
            index=models.Index(fields=["wallet", "is_open"], name="lot_wallet_is_open_idx"),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveIndex(model_name="creditlot", name="lot_wallet_open_idx")],
            database_operations=[migrations.RunPython(drop_old_index, create_old_index)],
        ),
    ]
