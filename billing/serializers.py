"""Output shapes shared by several endpoints (and by `agents`, for the metering endpoints)."""

from rest_framework import serializers

from billing.models import CreditDraw, CreditHold, CreditLot, CreditTransaction, LotCategory


class DrawSerializer(serializers.ModelSerializer):
    """Credits one debit took from one lot (the lot's category says whether they were paid for)."""

    lot_id = serializers.IntegerField(read_only=True)
    category = serializers.ChoiceField(choices=LotCategory.choices, source="lot.category", read_only=True)

    class Meta:
        model = CreditDraw
        fields = ["lot_id", "category", "credits"]
        read_only_fields = fields


class TransactionSerializer(serializers.ModelSerializer):
    lot_id = serializers.IntegerField(
        source="lot.id",
        allow_null=True,
        read_only=True,
        help_text="The lot this row's credits came in as (credits in only; null for debits).",
    )
    draws = DrawSerializer(
        many=True,
        read_only=True,
        help_text="The lots a debit took its credits from, in burn order (empty for credits in).",
    )

    class Meta:
        model = CreditTransaction
        fields = [
            "id",
            "kind",
            "amount",
            "balance_after",
            "agent_id",
            "agent_run_id",
            "stripe_payment_intent_id",
            "stripe_checkout_session_id",
            "reason",
            "metadata",
            "created_at",
            "lot_id",
            "draws",
        ]
        read_only_fields = fields


class LotSerializer(serializers.ModelSerializer):
    remaining = serializers.IntegerField(
        source="remaining_credits", help_text="Credits of the lot still in the balance."
    )
    held = serializers.IntegerField(source="held_credits", help_text="Of `remaining`, pinned by pending holds.")
    original = serializers.IntegerField(source="original_credits", help_text="Credits the lot came in with.")
    expires_at = serializers.DateTimeField(allow_null=True, help_text="Null: the credits never expire.")

    class Meta:
        model = CreditLot
        fields = ["id", "category", "remaining", "held", "original", "expires_at", "priority"]
        read_only_fields = fields


class ExpiringSoonSerializer(serializers.Serializer):
    credits = serializers.IntegerField(help_text="Remaining credits of the lots expiring within `within_days`.")
    first_expires_at = serializers.DateTimeField(allow_null=True, help_text="The soonest of those expiries.")
    within_days = serializers.IntegerField()


class WalletSerializer(serializers.Serializer):
    balance_credits = serializers.IntegerField()
    held_credits = serializers.IntegerField()
    available_credits = serializers.IntegerField()
    transactions = TransactionSerializer(many=True)
    lots = LotSerializer(many=True, help_text="The lots that still hold credits, in burn order (spent first, first).")
    expiring_soon = ExpiringSoonSerializer()


class PackageSerializer(serializers.Serializer):
    package_id = serializers.CharField()
    name = serializers.CharField()
    credits = serializers.IntegerField()
    price_cents = serializers.IntegerField()
    currency = serializers.CharField()
    stripe_price_id = serializers.CharField(allow_null=True)
    expires_in_days = serializers.IntegerField(
        allow_null=True, help_text="The credits expire this many days after payment; null: they never expire."
    )


class HoldSerializer(serializers.ModelSerializer):
    hold_id = serializers.IntegerField(source="id")
    credits = serializers.IntegerField(source="amount")
    run_id = serializers.UUIDField(
        source="agent_run_id", allow_null=True, help_text="The agent run this hold pays for (only it settles the hold)."
    )

    class Meta:
        model = CreditHold
        fields = ["hold_id", "agent_id", "credits", "status", "expires_at", "created_at", "settled_at", "run_id"]


class ChargeReceiptSerializer(serializers.Serializer):
    """A charge's ledger row as its receipt."""

    transaction_id = serializers.IntegerField(source="id")
    agent_id = serializers.CharField()
    credits_charged = serializers.SerializerMethodField()
    balance_after = serializers.IntegerField()

    def get_credits_charged(self, row: CreditTransaction) -> int:
        return -row.amount
