"""Project-wide endpoints: `/health` for load balancers and `/metrics` for Prometheus."""

import hmac
import os

from django.conf import settings
from django.db import connection
from django.db.utils import DatabaseError
from django.http import Http404, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import error_body

HEALTH_STATES = ["ok", "error"]


class HealthApi(APIView):
    """Whether this server can reach its database."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "Health"

        status = serializers.ChoiceField(choices=HEALTH_STATES)
        database = serializers.ChoiceField(choices=HEALTH_STATES)

    @extend_schema(responses={200: OutputSerializer, 503: OutputSerializer})
    def get(self, request):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except DatabaseError:
            body = self.OutputSerializer({"status": "error", "database": "error"}).data
            return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(self.OutputSerializer({"status": "ok", "database": "ok"}).data)


def exposition() -> bytes:
    """The metrics of this process, or with PROMETHEUS_MULTIPROC_DIR set (gunicorn with several
    workers) those of all worker processes, aggregated at scrape time."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


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
        return JsonResponse(error_body("PERMISSION_DENIED", "Metrics are not public."), status=403)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
