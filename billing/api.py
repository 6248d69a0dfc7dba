"""HTTP endpoints of the billing app. Views parse, call one service, serialize.

The metering endpoints that look up an agent's price (`/billing/charges`, `/billing/holds`,
`/billing/agent-costs`) live in `agents.api`: billing never imports agents."""

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import auto_recharge, ledger, services
from billing.models import AutoRecharge, CreditTransaction, LotCategory, TransactionKind
from billing.packages import all_packages, get_package
from billing.permissions import CanGrantCredits, CanSettleShortfall
from billing.selectors import limits_summary, transactions_for_user, wallet_for_user, wallet_summary, with_lots
from billing.serializers import HoldSerializer, PackageSerializer, TransactionSerializer, WalletSerializer
from billing.stripe_checkout import start_checkout
from billing.stripe_webhooks import process_event, store_event, verify_event
from core.db_routing import reads_from_replica
from core.errors import error_body
from core.idempotency import IDEMPOTENCY_PARAMETER, idempotency_key
from core.serializers import StrictCharField, StrictIntegerField

logger = logging.getLogger("billing")

LOT_TERMS = ("category", "expires_at")


class PackagesApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "Packages"

        packages = PackageSerializer(many=True)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request):
        return Response(self.OutputSerializer({"packages": all_packages()}).data)


class WalletApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: WalletSerializer})
    def get(self, request):
        return Response(WalletSerializer(wallet_summary(user_id=request.user.id)).data)


class TransactionFilter(filters.FilterSet):
    kind = filters.ChoiceFilter(choices=TransactionKind.choices)
    agent_id = filters.CharFilter()
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = CreditTransaction
        fields = ["kind", "agent_id", "created_after", "created_before"]


class TransactionViewSet(viewsets.ReadOnlyModelViewSet):
    """The signed-in user's ledger, newest first."""

    permission_classes = [IsAuthenticated]
    serializer_class = TransactionSerializer
    filterset_class = TransactionFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CreditTransaction.objects.none()
        return with_lots(transactions_for_user(user_id=self.request.user.id))

    def list(self, request, *args, **kwargs):
        # A listing decides nothing: the read replica may serve it (core.db_routing).
        with reads_from_replica(user_id=request.user.id):
            return super().list(request, *args, **kwargs)

    def retrieve(self, request, *args, **kwargs):
        with reads_from_replica(user_id=request.user.id):
            return super().retrieve(request, *args, **kwargs)


class AdminGrantApi(APIView):
    """Staff grant (positive `credits`) or debit (negative `credits`) with a required reason.
    A grant comes in as a lot: promotional unless `category` says paid, never expiring unless
    `expires_at` is given (a debit takes neither).

    Above `FINANCE_APPROVAL_THRESHOLD` nothing moves: 202 with the pending approval request,
    which another Finance user decides in the admin."""

    permission_classes = [CanGrantCredits]
    throttle_scope = "grant"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "GrantInput"

        user_id = StrictIntegerField(min_value=1)
        credits = StrictIntegerField(
            help_text="Positive grants, negative debits; never 0; |credits| ≤ BILLING_MAX_GRANT."
        )
        reason = StrictCharField(max_length=500, allow_blank=False, trim_whitespace=True)
        category = serializers.ChoiceField(
            choices=LotCategory.choices,
            required=False,
            help_text="Grants only: the lot's category (default promotional).",
        )
        expires_at = serializers.DateTimeField(
            required=False,
            allow_null=True,
            help_text="Grants only: when the granted credits expire (in the future; absent or null: never).",
        )

        def validate_credits(self, value: int) -> int:
            try:
                return ledger.check_staff_amount(value)
            except ledger.InvalidAmount as exc:
                raise serializers.ValidationError(exc.detail) from exc

        def validate_expires_at(self, value):
            if value is not None and value <= timezone.now():
                raise serializers.ValidationError("The expiry must be in the future.")
            return value

        def validate(self, attrs):
            if attrs["credits"] < 0:
                refused = [name for name in LOT_TERMS if name in attrs]
                if refused:
                    raise serializers.ValidationError(
                        {name: ["Only a grant (positive credits) takes lot terms."] for name in refused}
                    )
            return attrs

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "GrantResult"

        success = serializers.BooleanField()
        status = serializers.ChoiceField(choices=["completed"])
        new_balance = serializers.IntegerField()
        transaction_id = serializers.IntegerField()

    class PendingOutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "GrantPending"

        success = serializers.BooleanField(help_text="The request was accepted; `status` says what happened.")
        status = serializers.ChoiceField(
            choices=list(services.APPROVAL_STATUS_NAMES.values()),
            help_text="pending_approval until another Finance user decides (a replay shows the decision).",
        )
        approval_id = serializers.IntegerField()
        new_balance = serializers.IntegerField(help_text="The current balance: nothing moved on this request.")
        transaction_id = serializers.IntegerField(allow_null=True, help_text="The ledger row, once approved.")

    @extend_schema(
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: OutputSerializer, 202: PendingOutputSerializer},
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        outcome = services.staff_change_credits(
            **serializer.validated_data, actor_id=request.user.id, idempotency_key=idempotency_key(request)
        )
        if outcome.awaits_decision:
            return Response(self.PendingOutputSerializer(outcome).data, status=status.HTTP_202_ACCEPTED)
        return Response(self.OutputSerializer(outcome).data)


class CheckoutApi(APIView):
    """Start a Stripe Checkout for a credit package; credits arrive with the signed webhook."""

    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CheckoutInput"

        package_id = StrictCharField(max_length=64)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CheckoutStarted"

        checkout_url = serializers.URLField()
        session_id = serializers.CharField(source="purchase.stripe_checkout_session_id")

    @extend_schema(request=InputSerializer, parameters=[IDEMPOTENCY_PARAMETER], responses={200: OutputSerializer})
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        started = start_checkout(
            user=request.user,
            package_id=serializer.validated_data["package_id"],
            idempotency_key=idempotency_key(request),
        )
        return Response(self.OutputSerializer(started).data)


class StripeWebhookApi(APIView):
    """Stripe's signed events. Authenticated by the `Stripe-Signature` HMAC only."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "WebhookReceived"

        received = serializers.BooleanField()
        status = serializers.CharField()
        duplicate = serializers.BooleanField()

    @extend_schema(
        # Authenticated by the Stripe-Signature header alone (the `stripeSignature` security scheme);
        # a missing or wrong signature is 400 WEBHOOK_SIGNATURE_INVALID.
        auth=[{"stripeSignature": []}],
        request={
            "application/json": {
                "type": "object",
                "description": "A Stripe event, exactly as Stripe signed it.",
                "properties": {"id": {"type": "string"}, "type": {"type": "string"}},
                "required": ["id", "type"],
            }
        },
        responses={200: OutputSerializer},
    )
    def post(self, request):
        event = verify_event(payload=request.body, signature=request.headers.get("Stripe-Signature"))
        stored = store_event(event)
        try:
            outcome = process_event(event_pk=stored.pk)
        except (ledger.LedgerBusy, OperationalError, InterfaceError):
            # Busy past the retry budget, or the database connection lost (a node died): nothing
            # was kept; 503 like every other request (Stripe retries any answer but 2xx).
            logger.warning("[Billing] Webhook %s not processed: the database was busy or unreachable", stored.pk)
            raise
        except Exception:
            logger.exception("[Billing] Error: Webhook %s failed", stored.stripe_event_id)
            return Response(
                error_body("WEBHOOK_PROCESSING_FAILED", "Processing failed; Stripe will retry."),
                status=status.HTTP_500_INTERNAL_SERVER_ERROR,
            )
        return Response(self.OutputSerializer(outcome).data)


class AdminSettleShortfallApi(APIView):
    """Staff settle a wallet's refund/dispute shortfall so it can be charged again."""

    permission_classes = [CanSettleShortfall]
    throttle_scope = "grant"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SettleInput"

        user_id = StrictIntegerField(min_value=1)
        reason = StrictCharField(max_length=500)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ShortfallSettled"

        collected = serializers.IntegerField()
        written_off = serializers.IntegerField()
        still_owed = serializers.IntegerField(
            help_text="Credits held for running work when settled: owed until the holds end."
        )
        new_balance = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        settlement = services.settle_user_shortfall(**serializer.validated_data, actor_id=request.user.id)
        return Response(self.OutputSerializer(settlement).data)


class HoldDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: HoldSerializer})
    def get(self, request, hold_id: int):
        return Response(HoldSerializer(services.own_hold(user_id=request.user.id, hold_id=hold_id)).data)


class HoldCaptureApi(APIView):
    """Charge a pending hold (once); 409 if it was already captured, released or has expired."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "HoldCaptured"

        hold_id = serializers.IntegerField()
        status = serializers.ChoiceField(choices=["captured"])
        credits_charged = serializers.IntegerField()
        balance_after = serializers.IntegerField()
        transaction_id = serializers.IntegerField()

    @extend_schema(request=None, responses={200: OutputSerializer})
    def post(self, request, hold_id: int):
        captured = services.capture_own_hold(user_id=request.user.id, hold_id=hold_id)
        return Response(self.OutputSerializer(captured).data)


class HoldReleaseApi(APIView):
    """Give a pending hold's credits back; 409 if it is no longer pending."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    @extend_schema(request=None, responses={200: HoldSerializer})
    def post(self, request, hold_id: int):
        return Response(HoldSerializer(services.release_own_hold(user_id=request.user.id, hold_id=hold_id)).data)


class CapSerializer(serializers.Serializer):
    cap = serializers.IntegerField(allow_null=True, help_text="What applies: the lower of the two limits (null: none).")
    spent = serializers.IntegerField(help_text="Credits charged or held in this period so far.")
    resets_at = serializers.DateTimeField(help_text="When the period ends (UTC midnight, the 1st of next month).")


class LimitsSerializer(serializers.Serializer):
    daily_limit_credits = serializers.IntegerField(allow_null=True, help_text="Your own daily cap.")
    monthly_limit_credits = serializers.IntegerField(allow_null=True, help_text="Your own monthly cap.")
    finance_daily_limit_credits = serializers.IntegerField(
        allow_null=True, help_text="Finance's daily ceiling (you cannot raise it)."
    )
    finance_monthly_limit_credits = serializers.IntegerField(
        allow_null=True, help_text="Finance's monthly ceiling (you cannot raise it)."
    )
    daily = CapSerializer()
    monthly = CapSerializer()


class _LimitsInput(serializers.Serializer):
    daily_limit_credits = StrictIntegerField(
        min_value=0, max_value=10**15, allow_null=True, help_text="Credits per UTC day; null removes the cap."
    )
    monthly_limit_credits = StrictIntegerField(
        min_value=0, max_value=10**15, allow_null=True, help_text="Credits per calendar month; null removes the cap."
    )


def _set_limits(*, user_id: int, data: dict, by_finance: bool) -> dict:
    try:
        wallet = ledger.set_limits(user_id=user_id, **data, by_finance=by_finance)
    except ledger.SpendLimitAboveCeiling as exc:
        raise serializers.ValidationError({exc.field: [exc.detail]}) from exc
    return limits_summary(wallet=wallet)


class LimitsApi(APIView):
    """Your spend caps per UTC day and calendar month, and what you spent in each; a charge or
    hold that would pass one is refused with 402 `BILLING_SPEND_CAP_REACHED`."""

    permission_classes = [IsAuthenticated]

    class InputSerializer(_LimitsInput):
        class Meta:
            ref_name = "LimitsInput"

    @extend_schema(responses={200: LimitsSerializer})
    def get(self, request):
        return Response(LimitsSerializer(limits_summary(wallet=wallet_for_user(user_id=request.user.id))).data)

    @extend_schema(request=InputSerializer, responses={200: LimitsSerializer})
    def put(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        summary = _set_limits(user_id=request.user.id, data=serializer.validated_data, by_finance=False)
        return Response(LimitsSerializer(summary).data)


class AdminLimitsApi(APIView):
    """Finance sets a user's spend ceilings (the user may lower their caps below them, never raise them)."""

    permission_classes = [CanGrantCredits]
    throttle_scope = "grant"

    class InputSerializer(_LimitsInput):
        class Meta:
            ref_name = "AdminLimitsInput"

        user_id = StrictIntegerField(min_value=1)

    @extend_schema(request=InputSerializer, responses={200: LimitsSerializer})
    def put(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        user_id = data.pop("user_id")
        services.require_user(user_id=user_id)
        return Response(LimitsSerializer(_set_limits(user_id=user_id, data=data, by_finance=True)).data)


# --- saved card, auto-recharge, balance alerts -------------------------------------------


class PaymentMethodSerializer(serializers.Serializer):
    payment_method_id = serializers.CharField(source="stripe_payment_method_id")
    brand = serializers.CharField(help_text="e.g. visa; empty until Stripe's details arrive.")
    last4 = serializers.CharField()
    saved_at = serializers.DateTimeField()


class PaymentMethodApi(APIView):
    """The card you saved for auto-recharge; DELETE detaches it at Stripe and turns auto-recharge off."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: PaymentMethodSerializer})
    def get(self, request):
        card = auto_recharge.card_of(request.user.id)
        if card is None:
            raise auto_recharge.PaymentMethodNotFound("No card is saved.")
        return Response(PaymentMethodSerializer(card).data)

    @extend_schema(responses={204: None})
    def delete(self, request):
        auto_recharge.remove_card(user_id=request.user.id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PaymentMethodSetupApi(APIView):
    """Save a card: a Stripe Checkout Session in `setup` mode. The card is stored when Stripe's
    signed `setup_intent.succeeded` arrives (GET /billing/payment-method shows it)."""

    permission_classes = [IsAuthenticated]

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CardSetupStarted"

        checkout_url = serializers.URLField(source="url")
        session_id = serializers.CharField(source="id")

    @extend_schema(request=None, parameters=[IDEMPOTENCY_PARAMETER], responses={201: OutputSerializer})
    def post(self, request):
        session = auto_recharge.start_card_setup(user=request.user, idempotency_key=idempotency_key(request))
        return Response(self.OutputSerializer(session).data, status=status.HTTP_201_CREATED)


class AutoRechargeSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    threshold_credits = serializers.IntegerField(help_text="Recharge when a debit leaves fewer available credits.")
    package_id = serializers.CharField(help_text="The package bought each time.")
    monthly_limit_cents = serializers.IntegerField(help_text="At most this much per calendar month (UTC).")
    spent_this_month_cents = serializers.IntegerField(help_text="Recharges this month, in flight included.")
    failures_in_row = serializers.IntegerField(help_text="After 3, auto-recharge turns itself off.")
    disabled_reason = serializers.CharField(help_text="Why it turned itself off (empty otherwise).")
    has_payment_method = serializers.BooleanField()


def _auto_recharge_summary(user_id: int) -> dict:
    row = AutoRecharge.objects.filter(user_id=user_id).first() or AutoRecharge(user_id=user_id)
    return {
        "enabled": row.enabled,
        "threshold_credits": row.threshold_credits,
        "package_id": row.package_id,
        "monthly_limit_cents": row.monthly_limit_cents,
        "spent_this_month_cents": auto_recharge.month_spent_cents(user_id),
        "failures_in_row": row.failures_in_row,
        "disabled_reason": row.disabled_reason,
        "has_payment_method": auto_recharge.card_of(user_id) is not None,
    }


class AutoRechargeApi(APIView):
    """Buy a package with your saved card when a debit leaves your available credits below a
    threshold: once per crossing, never two at a time, within a monthly limit."""

    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AutoRechargeInput"

        enabled = serializers.BooleanField()
        threshold_credits = StrictIntegerField(min_value=1, max_value=10**12)
        package_id = serializers.ChoiceField(choices=[package.package_id for package in all_packages()])
        monthly_limit_cents = StrictIntegerField(min_value=1, max_value=10**10)

        def validate(self, data):
            package = get_package(data["package_id"])
            if data["monthly_limit_cents"] < package.price_cents:
                raise serializers.ValidationError(
                    {"monthly_limit_cents": [f"Below one recharge of {package.package_id} ({package.price_cents})."]}
                )
            return data

    @extend_schema(responses={200: AutoRechargeSerializer})
    def get(self, request):
        return Response(AutoRechargeSerializer(_auto_recharge_summary(request.user.id)).data)

    @extend_schema(request=InputSerializer, responses={200: AutoRechargeSerializer})
    def put(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        auto_recharge.configure(user_id=request.user.id, **serializer.validated_data)
        return Response(AutoRechargeSerializer(_auto_recharge_summary(request.user.id)).data)


class BalanceAlertsSerializer(serializers.Serializer):
    low_balance_threshold_credits = serializers.IntegerField(
        allow_null=True, help_text="Your own threshold (null: the default)."
    )
    default_threshold_credits = serializers.IntegerField()
    threshold_credits = serializers.IntegerField(help_text="What applies.")
    state = serializers.ChoiceField(choices=["ok", "low", "depleted"])


def _alerts_summary(wallet) -> dict:
    default = settings.BALANCE_LOW_THRESHOLD_CREDITS
    own = wallet.low_balance_threshold_credits
    threshold = default if own is None else own
    available = wallet.available_credits  # what the credits say now (a new wallet has seen no change yet)
    return {
        "low_balance_threshold_credits": own,
        "default_threshold_credits": default,
        "threshold_credits": threshold,
        "state": "depleted" if available <= 0 else "low" if available < threshold else "ok",
    }


class BalanceAlertsApi(APIView):
    """Events (and an e-mail for `balance.low`) when your available credits fall below a
    threshold (`balance.low`), reach 0 (`balance.depleted`) or are back (`balance.recovered`):
    once per crossing."""

    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "BalanceAlertsInput"

        low_balance_threshold_credits = StrictIntegerField(
            min_value=0, max_value=10**12, allow_null=True, help_text="null: the default; 0: no low-balance alert."
        )

    @extend_schema(responses={200: BalanceAlertsSerializer})
    def get(self, request):
        return Response(BalanceAlertsSerializer(_alerts_summary(wallet_for_user(user_id=request.user.id))).data)

    @extend_schema(request=InputSerializer, responses={200: BalanceAlertsSerializer})
    def put(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wallet = ledger.set_thresholds(user_id=request.user.id, **serializer.validated_data)
        return Response(BalanceAlertsSerializer(_alerts_summary(wallet)).data)
