"""The agents' endpoints: the price list, metering (`/billing/charges`, `/billing/holds`) and the
data agents (`/api/<agent>`: validate everything, then hold → run → capture/release)."""

import copy
import json

from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import AgentCost, AgentRun, RunStatus
from agents.runner import submit_run
from agents.selectors import active_agent, funding_draws, with_funding
from agents.services import TOOL_OPTIONS, InvalidRunInput, prepare_run_input, seed_agent_costs
from billing import ledger
from billing.permissions import CanEditAgentCosts
from billing.serializers import ChargeReceiptSerializer, DrawSerializer, HoldSerializer
from core.idempotency import IDEMPOTENCY_PARAMETER, idempotency_key
from core.openapi import AutoSchema
from core.parsers import LimitedJSONParser
from core.query import reject_unknown_query_parameters
from core.serializers import StrictBooleanField, StrictCharField


class AgentCostSerializer(serializers.ModelSerializer):
    class Meta:
        model = AgentCost
        fields = ["agent_id", "name", "description", "cost_credits"]
        ref_name = "Output"  # the schema's name for it since the first release: generated clients use it


class AgentCostsApi(APIView):
    """The active agents and what one run of each costs."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AgentCosts"

        agents = AgentCostSerializer(many=True)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request):
        agents = AgentCost.objects.filter(is_active=True).order_by("agent_id")
        return Response(self.OutputSerializer({"agents": agents}).data)


class AdminSeedCostsApi(APIView):
    """Staff (re)create the catalogue's agents at their default prices."""

    permission_classes = [CanEditAgentCosts]
    throttle_scope = "grant"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SeedCostsInput"

        reset = StrictBooleanField(default=False, help_text="Overwrite prices staff have edited.")

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SeedReport"

        created = serializers.IntegerField()
        updated = serializers.IntegerField()
        kept = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        report = seed_agent_costs(**serializer.validated_data, actor_id=request.user.id)
        return Response(self.OutputSerializer(report).data)


class ChargeInputSerializer(serializers.Serializer):
    agent_id = StrictCharField(max_length=64)


class HoldInputSerializer(ChargeInputSerializer):
    pass


def _meter(request, input_serializer: type[serializers.Serializer], verb):
    """Parse `{"agent_id"}`, then `verb` (`ledger.charge` or `ledger.hold`) at the agent's current
    price; the result and its status (201, or 200 for an `Idempotency-Key` replay)."""
    serializer = input_serializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    agent = active_agent(serializer.validated_data["agent_id"])
    result = verb(
        user_id=request.user.id,
        amount=agent.cost_credits,
        agent_id=agent.agent_id,
        idempotency_key=idempotency_key(request),
    )
    return result, status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED


class ChargeCreateApi(APIView):
    """Metering in one step for agents whose work is already done: charge the agent's current cost.

    Idempotent with an `Idempotency-Key` header (a replay answers 200 with the first receipt)."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    @extend_schema(
        request=ChargeInputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: ChargeReceiptSerializer, 201: ChargeReceiptSerializer},
    )
    def post(self, request):
        result, answer = _meter(request, ChargeInputSerializer, ledger.charge)
        return Response(ChargeReceiptSerializer(result.transaction).data, status=answer)


class HoldCreateApi(APIView):
    """Metering for agents run by other services: reserve the agent's current cost."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "agents"

    @extend_schema(
        request=HoldInputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: HoldSerializer, 201: HoldSerializer},
    )
    def post(self, request):
        result, answer = _meter(request, HoldInputSerializer, ledger.hold)
        return Response(HoldSerializer(result.hold).data, status=answer)


class AgentRequestSerializer(serializers.Serializer):
    tool_configuration = serializers.JSONField(required=False, default=dict)
    data = serializers.JSONField(required=False, help_text='{"csv": "<CSV with header>"} or {"rows": [{...}]}')
    file = serializers.FileField(required=False, help_text="A CSV file (multipart upload) instead of data.")

    def validate_tool_configuration(self, value):
        if isinstance(value, str) and self.context.get("multipart"):  # a form carries it as JSON text
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError("Must be a JSON object.") from exc
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value

    def validate(self, attrs):
        if ("data" in attrs) == ("file" in attrs):
            raise serializers.ValidationError({"data": ['Give either "data" or an uploaded "file".']})
        return attrs


class ReceiptSerializer(serializers.Serializer):
    run_id = serializers.UUIDField(source="id")
    credits_charged = serializers.IntegerField(allow_null=True)
    balance_after = serializers.IntegerField(allow_null=True)
    funded_by = serializers.SerializerMethodField(
        help_text="The lots the charge took its credits from, in burn order; empty when nothing was charged."
    )

    @extend_schema_field(DrawSerializer(many=True))
    def get_funded_by(self, run: AgentRun) -> list:
        return DrawSerializer(funding_draws(run), many=True).data


class AgentRunResultSerializer(serializers.Serializer):
    run_id = serializers.UUIDField(source="id")
    agent_id = serializers.CharField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    receipt = ReceiptSerializer(source="*")
    result = serializers.JSONField(allow_null=True)


class AgentRunFailedSerializer(AgentRunResultSerializer):
    """A run that failed, timed out, passed its memory limit or expired: nothing was charged."""

    error_code = serializers.SerializerMethodField()
    detail = serializers.SerializerMethodField()

    def get_error_code(self, run: AgentRun) -> str:
        return "AGENT_RUN_FAILED"

    def get_detail(self, run: AgentRun) -> str:
        return f"{run.failure_reason} No credits were charged."


def wants_async(request) -> bool:
    """`Prefer: respond-async` (other preferences are ignored, RFC 7240) or `?async=true`."""
    flag = request.query_params.get("async")
    if flag is not None and flag not in ("true", "false"):
        raise serializers.ValidationError({"async": ["true or false."]})
    prefer = request.headers.get("Prefer", "")
    return flag == "true" or "respond-async" in {p.strip().lower() for p in prefer.split(",")}


# The request bodies of the data agents, as JSON Schema: the tool's own options (generated from the
# same declaration that checks them, `agents.tools.options`) and the table.
_SCALAR = {"nullable": True, "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
DATA_SCHEMA = {
    "description": (
        'The table: exactly one of {"csv": CSV text with a header row (an empty cell is null)} or '
        '{"rows": [{column: scalar}]}. At most AGENT_MAX_ROWS rows and AGENT_MAX_INPUT_BYTES bytes (413 '
        "beyond). Text that does not parse as such CSV is a 400 with the reason under `errors.data`."
    ),
    "oneOf": [
        {
            "type": "object",
            "properties": {"csv": {"type": "string"}},
            "required": ["csv"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"rows": {"type": "array", "items": {"type": "object", "additionalProperties": _SCALAR}}},
            "required": ["rows"],
            "additionalProperties": False,
        },
    ],
}
UPLOAD_SCHEMA = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "UTF-8 CSV with a header row; one file."},
        "tool_configuration": {"type": "string", "description": "The tool's options as JSON object text."},
    },
    "required": ["file"],
}


def agent_request_body(agent_id: str) -> dict:
    options = copy.deepcopy(TOOL_OPTIONS[agent_id].OPTIONS_SCHEMA)
    options["description"] = (
        "The tool's options (an unknown option is a 400). Options that name columns must name columns of the data."
    )
    as_json = {
        "type": "object",
        "properties": {"tool_configuration": options, "data": copy.deepcopy(DATA_SCHEMA)},
        "required": ["data"],
    }
    return {"application/json": as_json, "multipart/form-data": copy.deepcopy(UPLOAD_SCHEMA)}


class AgentRunSchema(AutoSchema):
    """Each data agent's request body says exactly which options its tool takes."""

    def get_request_serializer(self):
        return agent_request_body(self.view.agent_id)

    def _get_request_body(self, direction="request"):
        body = super()._get_request_body(direction)
        if body:
            body["required"] = True  # without a body there is neither data nor a file: 400
        return body


class AgentRunApi(APIView):
    """Run a data agent on a table: its current cost is held, the tool runs in its own process,
    and the hold is captured on success or released on failure (422, nothing charged)."""

    permission_classes = [IsAuthenticated]
    parser_classes = [LimitedJSONParser, MultiPartParser]
    throttle_scope = "agents"
    schema = AgentRunSchema()
    agent_id: str = ""

    @extend_schema(
        parameters=[
            IDEMPOTENCY_PARAMETER,
            OpenApiParameter(
                "Prefer",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description="`respond-async` runs the agent on a worker (202); other preferences are ignored.",
            ),
            OpenApiParameter("async", bool, OpenApiParameter.QUERY, required=False, description="As Prefer."),
        ],
        responses={200: AgentRunResultSerializer, 202: AgentRunResultSerializer, 422: AgentRunFailedSerializer},
    )
    def post(self, request):
        key = idempotency_key(request)
        reject_unknown_query_parameters(request, {"async"})
        run_async = wants_async(request)
        if len(request.FILES.getlist("file")) > 1:
            raise serializers.ValidationError({"file": ["Upload one file."]})
        multipart = (request.content_type or "").startswith("multipart/")
        serializer = AgentRequestSerializer(data=request.data, context={"multipart": multipart})
        serializer.is_valid(raise_exception=True)
        attrs = serializer.validated_data
        try:
            prepared = prepare_run_input(
                agent_id=self.agent_id,
                tool_configuration=attrs["tool_configuration"],
                data=attrs.get("data"),
                csv_file=attrs.get("file"),
            )
        except InvalidRunInput as exc:
            raise serializers.ValidationError(exc.errors) from exc
        outcome = submit_run(
            user_id=request.user.id,
            agent_id=self.agent_id,
            tool_configuration=prepared.configuration,
            dataset=prepared.dataset,
            idempotency_key=key,
            run_async=run_async,
        )
        run = outcome.run
        if run_async:
            run.refresh_from_db()  # an eager (broker-less) run has already finished
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        if run_async and not run.is_finished:
            headers.update({"Location": f"/api/agents/runs/{run.id}", "Preference-Applied": "respond-async"})
            return Response(AgentRunResultSerializer(run).data, status=status.HTTP_202_ACCEPTED, headers=headers)
        if run.status in (RunStatus.FAILED, RunStatus.EXPIRED):
            return Response(
                AgentRunFailedSerializer(run).data, status=status.HTTP_422_UNPROCESSABLE_ENTITY, headers=headers
            )
        return Response(AgentRunResultSerializer(run).data, headers=headers)


class RunSerializer(serializers.ModelSerializer):
    run_id = serializers.UUIDField(source="id")
    receipt = ReceiptSerializer(source="*")

    class Meta:
        model = AgentRun
        fields = [
            "run_id",
            "agent_id",
            "status",
            "cost_credits",
            "receipt",
            "input_rows",
            "result_summary",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]


class RunDetailSerializer(RunSerializer):
    result = serializers.JSONField(read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "result"]


class RunFilter(filters.FilterSet):
    agent_id = filters.CharFilter()
    status = filters.ChoiceFilter(choices=RunStatus.choices)

    class Meta:
        model = AgentRun
        fields = ["agent_id", "status"]


class AgentRunViewSet(viewsets.ReadOnlyModelViewSet):
    """The signed-in user's agent runs with their receipts, newest first."""

    permission_classes = [IsAuthenticated]
    filterset_class = RunFilter
    lookup_value_converter = "uuid"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AgentRun.objects.none()
        runs = with_funding(AgentRun.objects.filter(user_id=self.request.user.id).order_by("-created_at"))
        return runs.defer("input_blob") if self.action == "retrieve" else runs.defer("input_blob", "result_blob")

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer
