"""The data agents' endpoints: validate everything, then hold → run → capture/release."""

import json

from django.conf import settings
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.datasets import DatasetError, parse_csv, parse_data
from agents.models import AgentRun, RunStatus
from agents.runner import submit_run
from agents.tools import clean, master, profile
from billing.api import IDEMPOTENCY_HEADER, idempotency_key
from billing.errors import ApiError
from billing.parsers import LimitedJSONParser

# Each tool's option validation, by agent (the tools themselves run in `agents.sandbox`).
TOOL_OPTIONS = {"profile-my-data": profile, "clean-my-data": clean, "master-my-data": master}


class AgentRequestSerializer(serializers.Serializer):
    tool_configuration = serializers.JSONField(required=False, default=dict)
    data = serializers.JSONField(required=False, help_text='{"csv": "<CSV with header>"} or {"rows": [{...}]}')
    file = serializers.FileField(required=False, help_text="A CSV file (multipart upload) instead of data.")

    def validate_tool_configuration(self, value):
        if isinstance(value, str):  # multipart forms carry it as JSON text
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


def _receipt(run: AgentRun) -> dict:
    return {"run_id": str(run.id), "credits_charged": run.credits_charged, "balance_after": run.balance_after}


def run_response_body(run: AgentRun) -> dict:
    return {
        "run_id": str(run.id),
        "agent_id": run.agent_id,
        "status": run.status,
        "receipt": _receipt(run),
        "result": run.result,
    }


def wants_async(request) -> bool:
    prefer = request.headers.get("Prefer", "")
    return "respond-async" in {p.strip().lower() for p in prefer.split(",")} or request.query_params.get(
        "async", ""
    ).lower() in ("true", "1", "yes")


class AgentRunApi(APIView):
    permission_classes = [IsAuthenticated]
    parser_classes = [LimitedJSONParser, MultiPartParser]
    throttle_scope = "agents"
    agent_id: str = ""

    def _dataset(self, attrs):
        try:
            if "file" in attrs:
                if attrs["file"].size > settings.AGENT_MAX_INPUT_BYTES:
                    raise DatasetError(
                        f"The file may be at most {settings.AGENT_MAX_INPUT_BYTES} bytes.", field="file", too_large=True
                    )
                raw = attrs["file"].read()
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError as exc:
                    raise DatasetError("The file must be UTF-8 CSV text.", field="file") from exc
                return parse_csv(text, field="file")
            return parse_data(attrs["data"])
        except DatasetError as exc:
            if exc.too_large:
                raise ApiError(error_code="PAYLOAD_TOO_LARGE", detail=str(exc), status_code=413) from exc
            raise serializers.ValidationError({exc.field: [str(exc)]}) from exc

    def _configuration(self, raw: dict, dataset) -> dict:
        tool = TOOL_OPTIONS[self.agent_id]
        unknown = set(raw) - set(tool.ConfigSerializer().fields)
        if unknown:
            raise serializers.ValidationError(
                {"tool_configuration": {key: ["Unknown option."] for key in sorted(unknown)}}
            )
        config = tool.ConfigSerializer(data=raw)
        if not config.is_valid():
            raise serializers.ValidationError({"tool_configuration": config.errors})
        if hasattr(tool, "validate_against"):
            try:
                tool.validate_against(dataset, config.validated_data)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"tool_configuration": exc.detail}) from exc
        if hasattr(tool, "candidate_pairs"):
            self._refuse_too_many_pairs(tool.candidate_pairs(dataset, config.validated_data))
        return dict(config.validated_data)

    @staticmethod
    def _refuse_too_many_pairs(pairs: int) -> None:
        """Work that is predictably too big is refused before any credits are held."""
        limit = settings.AGENT_MASTER_MAX_PAIRS
        if pairs > limit:
            raise ApiError(
                error_code="PAYLOAD_TOO_LARGE",
                detail=(
                    f"Matching this input would compare about {pairs:,} record pairs; the limit "
                    f"(AGENT_MASTER_MAX_PAIRS) is {limit:,}. Narrow tool_configuration.match_columns, lower "
                    "tool_configuration.max_block_size, or split the input into smaller batches."
                ),
                status_code=413,
                pairs=pairs,
                max_pairs=limit,
            )

    @extend_schema(
        request=AgentRequestSerializer,
        parameters=[
            OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER, required=False),
            OpenApiParameter("Prefer", str, OpenApiParameter.HEADER, required=False, description="respond-async"),
            OpenApiParameter("async", bool, OpenApiParameter.QUERY, required=False),
        ],
        responses={
            200: inline_serializer(
                "AgentRunResult",
                {
                    "run_id": serializers.UUIDField(),
                    "agent_id": serializers.CharField(),
                    "status": serializers.CharField(),
                    "receipt": inline_serializer(
                        "Receipt",
                        {
                            "run_id": serializers.UUIDField(),
                            "credits_charged": serializers.IntegerField(),
                            "balance_after": serializers.IntegerField(),
                        },
                    ),
                    "result": serializers.JSONField(),
                },
            )
        },
    )
    def post(self, request):
        key = idempotency_key(request)
        serializer = AgentRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dataset = self._dataset(serializer.validated_data)
        configuration = self._configuration(serializer.validated_data["tool_configuration"], dataset)
        run_async = wants_async(request)
        outcome = submit_run(
            user_id=request.user.id,
            agent_id=self.agent_id,
            tool_configuration=configuration,
            dataset=dataset,
            idempotency_key=key,
            run_async=run_async,
        )
        run = outcome.run
        if run_async:
            run.refresh_from_db()  # an eager (broker-less) run has already finished
        body = run_response_body(run)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        if run_async and not run.is_finished:
            headers.update({"Location": f"/api/agents/runs/{run.id}", "Preference-Applied": "respond-async"})
            return Response(body, status=status.HTTP_202_ACCEPTED, headers=headers)
        if run.status in (RunStatus.FAILED, RunStatus.EXPIRED):
            reason = run.error.split(": ", 1)[-1] if run.error else f"The run {run.status}."
            body.update(error_code="AGENT_RUN_FAILED", detail=f"{reason} No credits were charged.")
            return Response(body, status=status.HTTP_422_UNPROCESSABLE_ENTITY, headers=headers)
        return Response(body, headers=headers)


class RunSerializer(serializers.ModelSerializer):
    run_id = serializers.UUIDField(source="id")
    receipt = serializers.SerializerMethodField()

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

    def get_receipt(self, run: AgentRun) -> dict:
        return _receipt(run)


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
        runs = AgentRun.objects.filter(user_id=self.request.user.id).order_by("-created_at")
        return runs.defer("input_blob") if self.action == "retrieve" else runs.defer("input_blob", "result_blob")

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer
