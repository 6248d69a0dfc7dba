"""Every wallet's balance becomes a lot, so that balance == Σ lot remaining holds from the first
deploy: one opening lot per wallet with credits (category paid, never expiring, its cost basis
the wallet's purchases' average price per credit where it has any), pinned by the wallet's
pending holds. Draws, like ledger rows, are never updated (a trigger refuses it)."""

from collections import Counter

from django.db import migrations
from django.db.models import Sum

TRIGGER = "credit_draws_immutable"
MESSAGE = "credit_draws rows are immutable"
SQL = {
    "mysql": (
        f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON credit_draws FOR EACH ROW "
        f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE}'"
    ),
    "sqlite": f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON credit_draws BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
}


def open_lots(apps, schema_editor):
    Wallet = apps.get_model("billing", "Wallet")
    CreditLot = apps.get_model("billing", "CreditLot")
    CreditHold = apps.get_model("billing", "CreditHold")
    CreditHoldLot = apps.get_model("billing", "CreditHoldLot")
    Purchase = apps.get_model("billing", "Purchase")
    for wallet in Wallet.objects.filter(balance_credits__gt=0).order_by("id").iterator(chunk_size=1000):
        if CreditLot.objects.filter(wallet=wallet).exists():
            continue
        paid = Purchase.objects.filter(user_id=wallet.user_id, status="paid")
        totals = paid.aggregate(credits=Sum("credits"), cents=Sum("amount_cents"))
        currencies = Counter(paid.values_list("currency", flat=True))
        cost_basis = wallet.balance_credits * totals["cents"] // totals["credits"] if totals["credits"] else 0
        lot = CreditLot.objects.create(
            wallet=wallet,
            category="paid",
            source="opening",
            original_credits=wallet.balance_credits,
            remaining_credits=wallet.balance_credits,
            held_credits=wallet.held_credits,
            cost_basis_cents=cost_basis,
            currency=currencies.most_common(1)[0][0] if currencies else "",
        )
        CreditHoldLot.objects.bulk_create(
            CreditHoldLot(hold_id=hold_id, lot=lot, credits=amount)
            for hold_id, amount in CreditHold.objects.filter(wallet=wallet, status="pending").values_list(
                "id", "amount"
            )
        )


def create_trigger(apps, schema_editor):
    if sql := SQL.get(schema_editor.connection.vendor):
        schema_editor.execute(sql)


def drop_trigger(apps, schema_editor):
    if SQL.get(schema_editor.connection.vendor):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")


class Migration(migrations.Migration):
    dependencies = [("billing", "0011_credit_lots")]

    operations = [
        migrations.RunPython(open_lots, migrations.RunPython.noop),
        migrations.RunPython(create_trigger, drop_trigger, atomic=False),
    ]
