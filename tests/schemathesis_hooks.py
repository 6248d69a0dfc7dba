"""Checks for `schemathesis run`, loaded through schemathesis.toml (hooks = "tests.schemathesis_hooks")."""

import json
import re

import schemathesis
from schemathesis.generation.meta import ComponentKind
from schemathesis.specs.openapi.checks import negative_data_rejection

AGENT_RUNS = re.compile(r"^/api/(profile|clean|master)-my-data$")
COLUMN_RULES = ("Unknown column", "Required by the most_recent rule")

# For the operations schemathesis.toml lets answer 400 to schema-valid data: the `errors` fields
# such a 400 may name (the reasons no schema can state). Any other 400 fails.
STATEFUL_FIELDS = {
    ("POST", "/auth/register"): {"email", "password"},  # already registered; common / like the e-mail
    ("POST", "/auth/password"): {"old_password", "new_password"},  # wrong current one; common
    ("POST", "/auth/logout"): {"refresh"},  # not a valid refresh token (a secret)
    ("PUT", "/billing/auto-recharge"): {"monthly_limit_cents"},  # below one recharge of the chosen package
}


def _body(response) -> dict:
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _agent_refusal_is_about_the_data(errors: dict, *, multipart: bool) -> bool:
    """CSV or rows that do not make a table, or options naming columns the table lacks (in a form,
    whose schema can only say "text", any problem with the options' JSON text)."""
    for field, detail in errors.items():
        if field in ("data", "data.csv", "data.rows", "file") or (multipart and field == "tool_configuration"):
            continue
        if field != "tool_configuration" or not isinstance(detail, dict):
            return False
        if not all(any(rule in message for rule in COLUMN_RULES) for message in _messages(detail)):
            return False
    return True


def _messages(detail):
    if isinstance(detail, dict):
        for value in detail.values():
            yield from _messages(value)
    elif isinstance(detail, list):
        for value in detail:
            yield from _messages(value)
    else:
        yield str(detail)


@schemathesis.check
def refused_only_for_what_no_schema_can_say(ctx, response, case):
    """A 400 to schema-valid data is only allowed where schemathesis.toml says so, and only for the
    reason named there: anything else the validation refuses must be in the schema."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    body = _body(response)
    errors = body.get("errors") if isinstance(body.get("errors"), dict) else {}
    operation = (case.method.upper(), case.operation.path)
    if operation == ("POST", "/billing/webhook"):
        allowed = body.get("error_code") == "WEBHOOK_SIGNATURE_INVALID"
    elif AGENT_RUNS.match(case.operation.path):
        multipart = (case.media_type or "").startswith("multipart/")
        allowed = bool(errors) and _agent_refusal_is_about_the_data(errors, multipart=multipart)
    elif operation in STATEFUL_FIELDS:
        allowed = bool(errors) and set(errors) <= STATEFUL_FIELDS[operation]
    else:
        return None  # positive_data_acceptance judges every other operation
    if not allowed:
        raise AssertionError(f"Schema-valid request refused for a reason the schema could state: {body}")
    return None


@schemathesis.check
def negative_data_rejection_on_the_wire(ctx, response, case):
    """negative_data_rejection for the agent endpoints, except for a negative multipart *body*: a
    form carries every value as text or bytes, so a "wrong type" there ({} or 0 as the file, {} as
    the tool_configuration text) reaches the server byte for byte as a valid upload."""
    if not AGENT_RUNS.match(case.operation.path):
        return None
    body = case.meta.components.get(ComponentKind.BODY) if case.meta is not None else None
    if (case.media_type or "").startswith("multipart/") and body is not None and body.mode.is_negative:
        return None
    return negative_data_rejection(ctx, response, case)
