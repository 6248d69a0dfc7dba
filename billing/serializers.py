from rest_framework import serializers

from billing.models import CreditTransaction


class StrictIntegerField(serializers.IntegerField):
    """An integer that is really a JSON integer: "100", 100.0 and true are refused."""

    default_error_messages = {"invalid": "A whole number (JSON integer) is required."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string that is really a JSON string: 5 and true are refused, not turned into "5"/"True"."""

    default_error_messages = {"invalid": "A string is required."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


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
