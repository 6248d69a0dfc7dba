"""One error shape for the whole API: {"error_code", "detail"} (+ "errors" per field, + the
fields a domain error adds, e.g. `required` and `available`).

Domain code raises `DomainError`s, which know nothing of HTTP; `STATUS_BY_CODE` below is the one
table that turns their codes into status codes.
"""

import logging
from typing import Any, ClassVar

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger("billing")


class DomainError(Exception):
    """A refusal the caller can explain to the user: a stable `error_code`, a sentence and, from
    `extra()`, the figures behind it. Subclasses set `error_code`; `STATUS_BY_CODE` gives the status."""

    error_code: ClassVar[str] = "INVALID_REQUEST"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def extra(self) -> dict[str, Any]:
        return {}


class InvalidIdempotencyKey(DomainError):
    error_code = "INVALID_IDEMPOTENCY_KEY"


class PayloadTooLarge(DomainError):
    """Input predictably too big to process; `limits` names the limit that was passed."""

    error_code = "PAYLOAD_TOO_LARGE"

    def __init__(self, detail: str, **limits: int):
        super().__init__(detail)
        self.limits = limits

    def extra(self) -> dict[str, Any]:
        return dict(self.limits)


# Every error code a domain error can carry, and the status it is answered with.
STATUS_BY_CODE: dict[str, int] = {
    "LEDGER_ERROR": 400,
    "INVALID_REQUEST": 400,
    "INVALID_AMOUNT": 400,
    "INVALID_IDEMPOTENCY_KEY": 400,
    "WEBHOOK_SIGNATURE_INVALID": 400,
    "BILLING_INSUFFICIENT_CREDITS": 402,
    "BILLING_WALLET_IN_SHORTFALL": 402,
    "BILLING_SPEND_CAP_REACHED": 402,
    "USER_NOT_FOUND": 404,
    "AGENT_UNAVAILABLE": 404,
    "UNKNOWN_PACKAGE": 404,
    "HOLD_NOT_FOUND": 404,
    "PAYMENT_METHOD_NOT_FOUND": 404,
    "IDEMPOTENCY_KEY_REUSED": 409,
    "HOLD_NOT_PENDING": 409,
    "HOLD_EXPIRED": 409,
    "HOLD_OWNED_BY_RUN": 409,
    "PAYMENT_METHOD_REQUIRED": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "LEDGER_INCONSISTENT": 500,  # lots disagree with the balance: nothing written, reconcile_ledger says where
    "STRIPE_ERROR": 502,
    "LEDGER_BUSY": 503,
    "STRIPE_UNAVAILABLE": 503,
}

# DRF's own exceptions, by the code we answer them with (their status is DRF's).
_DRF_CODES = {
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


def error_body(error_code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error_code": error_code, "detail": detail, **extra}


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def api_exception_handler(exc, context):
    if isinstance(exc, DomainError):
        return Response(error_body(exc.error_code, exc.detail, **exc.extra()), status=STATUS_BY_CODE[exc.error_code])
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("PAYLOAD_TOO_LARGE", "The request body is too large."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, OperationalError | InterfaceError):  # also a connection closed under us
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else "?"
        logger.error("[Billing] Error: database unavailable: %s %s", exc.__class__.__name__, code)
        return Response(
            error_body("SERVICE_UNAVAILABLE", "The database is unavailable; retry shortly."),
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
            **error_body("VALIDATION_ERROR", _flatten(exc.detail)),
            "errors": exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail},
        }
    else:
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "ERROR")
        response.data = error_body(code, _flatten(exc.detail))
    return response


def json_not_found(request, exception=None):
    return JsonResponse(error_body("NOT_FOUND", "Not found."), status=404)


def json_server_error(request):
    return JsonResponse(error_body("INTERNAL_ERROR", "Internal server error."), status=500)
