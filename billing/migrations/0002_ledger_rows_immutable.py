"""The database itself refuses to UPDATE a ledger row: corrections are new rows.

(DELETE is refused by the ORM and by PROTECT foreign keys; a DELETE trigger would
also block the test runner's table flush.)
"""

from django.db import migrations

TRIGGER = "credit_transactions_immutable"
MESSAGE = "credit_transactions rows are immutable; write a correcting transaction"

SQL = {
    "mysql": (
        f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON credit_transactions FOR EACH ROW "
        f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE}'"
    ),
    "sqlite": (
        f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON credit_transactions BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
    ),
    "postgresql": None,
}


def create_trigger(apps, schema_editor):
    sql = SQL.get(schema_editor.connection.vendor)
    if sql:
        schema_editor.execute(sql)


def drop_trigger(apps, schema_editor):
    if SQL.get(schema_editor.connection.vendor):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger, atomic=False)]
