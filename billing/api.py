"""HTTP endpoints of the billing app. Views parse, call one service, serialize."""

import hmac
import logging

from django.conf import settings
from django.db import connection
from django.db.utils import DatabaseError
from django.http import Http404, HttpResponse, JsonResponse
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import serializers, status, viewsets
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import AgentCost
from agents.selectors import active_agent
from agents.services import seed_agent_costs
from billing import ledger, metrics
from billing.approvals import change_credits
from billing.errors import ApiError
from billing.models import ApprovalStatus, CreditHold, CreditTransaction, TransactionKind
from billing.packages import all_packages
from billing.permissions import CanEditAgentCosts, CanGrantCredits, CanSettleShortfall
from billing.selectors import transactions_for_user, wallet_for_user, wallet_summary
from billing.serializers import (
    PackageSerializer,
    StrictCharField,
    StrictIntegerField,
    TransactionSerializer,
    WalletSerializer,
)
from billing.stripe_checkout import start_checkout
from billing.stripe_webhooks import process_event, store_event, verify_event
from core.fields import CLIENT_KEY_PREFIX
from users.models import User

logger = logging.getLogger("billing")

IDEMPOTENCY_HEADER = "Idempotency-Key"
# How a grant awaiting approval reports its request's state.
APPROVAL_STATUS_NAMES = {
    ApprovalStatus.PENDING: "pending_approval",
    ApprovalStatus.APPROVED: "approved",
    ApprovalStatus.REJECTED: "rejected",
}


def require_user(user_id: int) -> None:
    if not User.objects.filter(pk=user_id).exists():
        raise ApiError(error_code="USER_NOT_FOUND", detail="No user with this id.", status_code=404)


def idempotency_key(request) -> str | None:
    """The request's `Idempotency-Key` header (1–255 printable characters), if any, in the
    clients' own namespace: no client key can equal a key the system writes."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 255 or not key.isprintable():
        raise ApiError(
            error_code="INVALID_IDEMPOTENCY_KEY",
            detail="Idempotency-Key must be 1 to 255 printable characters.",
        )
    return CLIENT_KEY_PREFIX + key


class HealthApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        responses={
            200: inline_serializer("Health", {"status": serializers.CharField(), "database": serializers.CharField()})
        }
    )
    def get(self, request):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except DatabaseError:
            return Response({"status": "error", "database": "error"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"status": "ok", "database": "ok"})


class PackagesApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(responses={200: inline_serializer("Packages", {"packages": PackageSerializer(many=True)})})
    def get(self, request):
        return Response({"packages": [package.as_dict() for package in all_packages()]})


class AgentCostsApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = AgentCost
            fields = ["agent_id", "name", "description", "cost_credits"]

    @extend_schema(responses={200: inline_serializer("AgentCosts", {"agents": OutputSerializer(many=True)})})
    def get(self, request):
        agents = AgentCost.objects.filter(is_active=True).order_by("agent_id")
        return Response({"agents": self.OutputSerializer(agents, many=True).data})


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
        return transactions_for_user(user_id=self.request.user.id)


class AdminGrantApi(APIView):
    """Staff grant (positive `credits`) or debit (negative `credits`) with a required reason.

    Above `FINANCE_APPROVAL_THRESHOLD` nothing moves: 202 with the pending approval request,
    which another Finance user decides in the admin."""

    permission_classes = [CanGrantCredits]
    throttle_scope = "grant"

    class GrantInputSerializer(serializers.Serializer):
        user_id = StrictIntegerField(min_value=1)
        credits = StrictIntegerField()
        reason = StrictCharField(max_length=500, allow_blank=False, trim_whitespace=True)

        def validate_credits(self, value: int) -> int:
            limit = settings.BILLING_MAX_GRANT
            if value == 0:
                raise serializers.ValidationError("Credits must not be zero.")
            if abs(value) > limit:
                raise serializers.ValidationError(f"Credits must be between -{limit} and {limit}.")
            return value

    class GrantResultSerializer(serializers.Serializer):
        success = serializers.BooleanField()
        status = serializers.ChoiceField(choices=["completed"])
        new_balance = serializers.IntegerField()
        transaction_id = serializers.IntegerField()

    class GrantPendingSerializer(serializers.Serializer):
        success = serializers.BooleanField(help_text="The request was accepted; `status` says what happened.")
        status = serializers.ChoiceField(
            choices=list(APPROVAL_STATUS_NAMES.values()),
            help_text="pending_approval until another Finance user decides (a replay shows the decision).",
        )
        approval_id = serializers.IntegerField()
        new_balance = serializers.IntegerField(help_text="The current balance: nothing moved on this request.")
        transaction_id = serializers.IntegerField(allow_null=True, help_text="The ledger row, once approved.")

    @extend_schema(request=GrantInputSerializer, responses={200: GrantResultSerializer, 202: GrantPendingSerializer})
    def post(self, request):
        serializer = self.GrantInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        require_user(data["user_id"])
        change = change_credits(
            user_id=data["user_id"],
            amount=data["credits"],
            reason=data["reason"],
            actor_id=request.user.id,
            idempotency_key=idempotency_key(request),
        )
        if change.approval is not None:
            approval = change.approval
            pending = {
                "success": True,
                "status": APPROVAL_STATUS_NAMES[approval.status],
                "approval_id": approval.id,
                "new_balance": wallet_for_user(user_id=data["user_id"]).balance_credits,
                "transaction_id": approval.transaction_id,
            }
            return Response(self.GrantPendingSerializer(pending).data, status=status.HTTP_202_ACCEPTED)
        result = change.executed
        done = {
            "success": True,
            "status": "completed",
            "new_balance": result.balance_after,
            "transaction_id": result.transaction.id,
        }
        return Response(self.GrantResultSerializer(done).data)


class AdminSeedCostsApi(APIView):
    permission_classes = [CanEditAgentCosts]
    throttle_scope = "grant"

    class SeedCostsInputSerializer(serializers.Serializer):
        reset = serializers.BooleanField(default=False, help_text="Overwrite prices staff have edited.")

    @extend_schema(
        request=SeedCostsInputSerializer,
        responses={
            200: inline_serializer(
                "SeedReport",
                {
                    "created": serializers.IntegerField(),
                    "updated": serializers.IntegerField(),
                    "kept": serializers.IntegerField(),
                },
            )
        },
    )
    def post(self, request):
        serializer = self.SeedCostsInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(seed_agent_costs(**serializer.validated_data, actor_id=request.user.id).as_dict())


class CheckoutApi(APIView):
    """Start a Stripe Checkout for a credit package; credits arrive with the signed webhook."""

    permission_classes = [IsAuthenticated]

    class CheckoutInputSerializer(serializers.Serializer):
        package_id = StrictCharField(max_length=64)

    @extend_schema(
        request=CheckoutInputSerializer,
        responses={
            200: inline_serializer(
                "CheckoutStarted", {"checkout_url": serializers.URLField(), "session_id": serializers.CharField()}
            )
        },
    )
    def post(self, request):
        serializer = self.CheckoutInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        started = start_checkout(
            user=request.user,
            package_id=serializer.validated_data["package_id"],
            idempotency_key=idempotency_key(request),
        )
        return Response(
            {"checkout_url": started.checkout_url, "session_id": started.purchase.stripe_checkout_session_id}
        )


class StripeWebhookApi(APIView):
    """Stripe's signed events. Authenticated by the `Stripe-Signature` HMAC only."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        request=None,
        responses={
            200: inline_serializer(
                "WebhookReceived",
                {
                    "received": serializers.BooleanField(),
                    "status": serializers.CharField(),
                    "duplicate": serializers.BooleanField(),
                },
            )
        },
    )
    def post(self, request):
        event = verify_event(payload=request.body, signature=request.headers.get("Stripe-Signature"))
        stored = store_event(event)
        try:
            outcome = process_event(event_pk=stored.pk)
        except Exception:
            logger.exception("[Billing] Error: Webhook %s failed", stored.stripe_event_id)
            return Response(
                {"error_code": "WEBHOOK_PROCESSING_FAILED", "detail": "Processing failed; Stripe will retry."},
                status=status.HTTP_500_INTERNAL_SERVER_ERROR,
            )
        return Response({"received": True, "status": outcome.status, "duplicate": outcome.duplicate})


class AdminSettleShortfallApi(APIView):
    """Staff settle a wallet's refund/dispute shortfall so it can be charged again."""

    permission_classes = [CanSettleShortfall]
    throttle_scope = "grant"

    class SettleInputSerializer(serializers.Serializer):
        user_id = StrictIntegerField(min_value=1)
        reason = StrictCharField(max_length=500)

    @extend_schema(
        request=SettleInputSerializer,
        responses={
            200: inline_serializer(
                "ShortfallSettled",
                {
                    "collected": serializers.IntegerField(),
                    "written_off": serializers.IntegerField(),
                    "still_owed": serializers.IntegerField(
                        help_text="Credits held for running work when settled: owed until the holds end."
                    ),
                    "new_balance": serializers.IntegerField(),
                },
            )
        },
    )
    def post(self, request):
        serializer = self.SettleInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        require_user(data["user_id"])
        result = ledger.settle_shortfall(user_id=data["user_id"], actor_id=request.user.id, reason=data["reason"])
        wallet = wallet_for_user(user_id=data["user_id"])
        return Response(
            {
                "collected": result.clawed_back,
                "written_off": result.shortfall,
                "still_owed": result.still_owed,
                "new_balance": wallet.balance_credits,
            }
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


class HoldCreateApi(APIView):
    """Metering for agents run by other services: reserve the agent's current cost."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    class HoldInputSerializer(serializers.Serializer):
        agent_id = StrictCharField(max_length=64)

    @extend_schema(request=HoldInputSerializer, responses={201: HoldSerializer})
    def post(self, request):
        serializer = self.HoldInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = active_agent(serializer.validated_data["agent_id"])
        result = ledger.hold(
            user_id=request.user.id,
            amount=agent.cost_credits,
            agent_id=agent.agent_id,
            idempotency_key=idempotency_key(request),
        )
        return Response(
            HoldSerializer(result.hold).data, status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED
        )


class ChargeCreateApi(APIView):
    """Metering in one step for agents whose work is already done: charge the agent's current cost.

    Idempotent with an `Idempotency-Key` header (a replay answers 200 with the first receipt)."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    class ChargeInputSerializer(serializers.Serializer):
        agent_id = StrictCharField(max_length=64)

    @extend_schema(
        request=ChargeInputSerializer,
        responses={
            201: inline_serializer(
                "ChargeReceipt",
                {
                    "transaction_id": serializers.IntegerField(),
                    "agent_id": serializers.CharField(),
                    "credits_charged": serializers.IntegerField(),
                    "balance_after": serializers.IntegerField(),
                },
            )
        },
    )
    def post(self, request):
        serializer = self.ChargeInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = active_agent(serializer.validated_data["agent_id"])
        result = ledger.charge(
            user_id=request.user.id,
            amount=agent.cost_credits,
            agent_id=agent.agent_id,
            idempotency_key=idempotency_key(request),
        )
        row = result.transaction
        return Response(
            {
                "transaction_id": row.id,
                "agent_id": row.agent_id,
                "credits_charged": -row.amount,
                "balance_after": row.balance_after,
            },
            status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED,
        )


class _OwnHoldMixin:
    def own_hold(self, request, hold_id: int) -> CreditHold:
        hold = CreditHold.objects.filter(pk=hold_id, wallet__user_id=request.user.id).first()
        if hold is None:
            raise ApiError(error_code="HOLD_NOT_FOUND", detail="No such hold.", status_code=404)
        return hold

    def own_unclaimed_hold(self, request, hold_id: int) -> CreditHold:
        """The user's hold, unless an agent run owns it: only the run settles its hold."""
        hold = self.own_hold(request, hold_id)
        if hold.agent_run_id is not None:
            raise ApiError(
                error_code="HOLD_OWNED_BY_RUN",
                detail=f"This hold pays for agent run {hold.agent_run_id}; the run captures or releases it.",
                status_code=409,
            )
        return hold


class HoldDetailApi(_OwnHoldMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: HoldSerializer})
    def get(self, request, hold_id: int):
        return Response(HoldSerializer(self.own_hold(request, hold_id)).data)


class HoldCaptureApi(_OwnHoldMixin, APIView):
    """Charge a pending hold (once); 409 if it was already captured, released or has expired."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    @extend_schema(
        request=None,
        responses={
            200: inline_serializer(
                "HoldCaptured",
                {
                    "hold_id": serializers.IntegerField(),
                    "status": serializers.CharField(),
                    "credits_charged": serializers.IntegerField(),
                    "balance_after": serializers.IntegerField(),
                    "transaction_id": serializers.IntegerField(),
                },
            )
        },
    )
    def post(self, request, hold_id: int):
        hold = self.own_unclaimed_hold(request, hold_id)
        result = ledger.capture(hold_id=hold.id)
        return Response(
            {
                "hold_id": hold.id,
                "status": "captured",
                "credits_charged": -result.transaction.amount,
                "balance_after": result.balance_after,
                "transaction_id": result.transaction.id,
            }
        )


class HoldReleaseApi(_OwnHoldMixin, APIView):
    """Give a pending hold's credits back; 409 if it is no longer pending."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    @extend_schema(request=None, responses={200: HoldSerializer})
    def post(self, request, hold_id: int):
        hold = self.own_unclaimed_hold(request, hold_id)
        return Response(HoldSerializer(ledger.release(hold_id=hold.id)).data)


def _metrics_allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    sent = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        return True
    if settings.NUM_PROXIES:
        return False  # every request comes from the proxy's address: only the token counts
    return request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_IPS


def metrics_view(request):
    """Prometheus exposition; only from METRICS_ALLOWED_IPS or with `Authorization: Bearer <METRICS_TOKEN>`."""
    if not settings.METRICS_ENABLED:
        raise Http404
    if not _metrics_allowed(request):
        return JsonResponse({"error_code": "PERMISSION_DENIED", "detail": "Metrics are not public."}, status=403)
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
