"""The OpenAPI schema: one error shape on every operation, and the request constraints DRF
enforces but drf-spectacular does not write down, so a generated client (and schemathesis)
knows exactly what is accepted."""

from django.core.validators import RegexValidator
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import serializers

# A CharField that trims and may not be blank refuses "" and whitespace-only text (Python's \s is
# what str.strip() removes). JSON Schema patterns are unanchored: "contains a non-space character".
NON_BLANK_PATTERN = r"\S"

ERROR_STATUSES = {
    "400": "Invalid input (field errors in `errors`) or malformed body (an HTML page if not even valid HTTP)",
    "401": "Missing or invalid JWT",
    "402": "Not enough credits (`required`, `available`) or the wallet is in shortfall",
    "403": "Not allowed for this user",
    "404": "Not found",
    "405": "Method not allowed",
    "406": "Not acceptable (only JSON is served)",
    "409": "Idempotency key reused with other parameters, or hold no longer pending",
    "413": "Body or data too large",
    "415": "Unsupported media type or charset",
    "422": "The agent run failed; nothing was charged",
    "429": "Rate limited",
    "500": "Internal error (the webhook: processing failed, Stripe retries)",
    "502": "Stripe refused the request",
    "503": "Database, ledger lock or Stripe temporarily unavailable; retry",
}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's AutoSchema, plus what a request's fields really accept."""

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction != "request":
            return schema
        if isinstance(field, serializers.ListField) and not field.allow_empty:
            schema.setdefault("minItems", 1)
        if (
            isinstance(field, serializers.CharField)
            and schema.get("type") == "string"
            and not field.allow_blank
            and not field.read_only
            and not {"pattern", "format", "enum"} & set(schema)
            and not any(isinstance(validator, RegexValidator) for validator in field.validators)
        ):
            if field.trim_whitespace:
                schema["pattern"] = NON_BLANK_PATTERN
            else:
                schema.setdefault("minLength", 1)
        return schema


def add_error_responses(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "error_code": {"type": "string"},
            "detail": {"type": "string"},
            "errors": {"type": "object"},
        },
        "required": ["error_code", "detail"],
        "additionalProperties": True,
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    # gunicorn answers what is not valid HTTP (a request line over 4094 bytes, a NUL in a header)
    # itself, with an HTML page, before the application sees the request.
    not_http = {"text/html": {"schema": {"type": "string"}}}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                content = {**error, **not_http} if status == "400" else error
                documented = responses.setdefault(status, {"description": description, "content": content})
                documented["description"] = documented.get("description") or description
    return result
