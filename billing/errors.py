"""One error shape for the whole API: {"error_code", "detail"} (+ "errors" per field).

Domain exceptions from the ledger are mapped to HTTP here and only here.
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from billing.ledger import LedgerError

logger = logging.getLogger("billing")

_CODES = {
    exceptions.ParseError: "MALFORMED_REQUEST",
    exceptions.AuthenticationFailed: "AUTHENTICATION_FAILED",
    exceptions.NotAuthenticated: "AUTHENTICATION_REQUIRED",
    exceptions.PermissionDenied: "PERMISSION_DENIED",
    exceptions.NotFound: "NOT_FOUND",
    exceptions.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    exceptions.NotAcceptable: "NOT_ACCEPTABLE",
    exceptions.UnsupportedMediaType: "UNSUPPORTED_MEDIA_TYPE",
    exceptions.Throttled: "RATE_LIMITED",
}


class ApiError(exceptions.APIException):
    """An error with our own code, raised by views (e.g. UNKNOWN_PACKAGE)."""

    def __init__(self, *, error_code: str, detail: str, status_code: int = 400, **extra):
        super().__init__(detail=detail)
        self.status_code = status_code
        self.error_code = error_code
        self.extra = extra


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def api_exception_handler(exc, context):
    if isinstance(exc, LedgerError):
        return Response({"error_code": exc.error_code, "detail": exc.detail, **exc.extra()}, status=exc.status_code)
    if isinstance(exc, ApiError):
        return Response({"error_code": exc.error_code, "detail": str(exc.detail), **exc.extra}, status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"error_code": "PAYLOAD_TOO_LARGE", "detail": "The request body is too large."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, OperationalError):
        logger.error("[Billing] Error: database unavailable: %s", exc.__class__.__name__)
        return Response(
            {"error_code": "SERVICE_UNAVAILABLE", "detail": "The database is unavailable; retry shortly."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    if isinstance(exc, DatabaseError):
        return None
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "error_code": "VALIDATION_ERROR",
            "detail": _flatten(exc.detail),
            "errors": exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail},
        }
    else:
        code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), "ERROR")
        response.data = {"error_code": code, "detail": _flatten(exc.detail)}
    return response


def json_not_found(request, exception=None):
    return JsonResponse({"error_code": "NOT_FOUND", "detail": "Not found."}, status=404)


def json_server_error(request):
    return JsonResponse({"error_code": "INTERNAL_ERROR", "detail": "Internal server error."}, status=500)
