"""Output shapes shared by several endpoints (and by `agents`, for the metering endpoints)."""

from rest_framework import serializers

from billing.models import CreditHold, CreditTransaction


class TransactionSerializer(serializers.ModelSerializer):
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
        ]
        read_only_fields = fields


class WalletSerializer(serializers.Serializer):
    balance_credits = serializers.IntegerField()
    held_credits = serializers.IntegerField()
    available_credits = serializers.IntegerField()
    transactions = TransactionSerializer(many=True)


class PackageSerializer(serializers.Serializer):
    package_id = serializers.CharField()
    name = serializers.CharField()
    credits = serializers.IntegerField()
    price_cents = serializers.IntegerField()
    currency = serializers.CharField()
    stripe_price_id = serializers.CharField(allow_null=True)


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
