"""Document the one error shape on every operation of the OpenAPI schema."""

ERROR_STATUSES = {
    "400": "Invalid input (field errors in `errors`) or malformed body",
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
    reference = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                documented = responses.setdefault(status, {"description": description, **reference})
                documented["description"] = documented.get("description") or description
    return result
