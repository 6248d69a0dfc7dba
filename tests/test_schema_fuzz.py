"""Schema fuzzing: schemathesis generates requests for every operation of our OpenAPI schema and
sends them to the app (in-process WSGI), with a valid JWT and without. No 5xx; every response
must match the schema (status code, content type and body)."""

import json

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing import ledger
from tests.conftest import bearer_client


def _json_only_schema() -> dict:
    """Our generated schema, with only the JSON request bodies: schemathesis's WSGI transport cannot
    send the multipart variant of the agent endpoints (uploads are covered in test_api_agents)."""
    generated = SchemaGenerator().get_schema(request=None, public=True)
    document = json.loads(OpenApiJsonRenderer().render(generated, renderer_context={}))
    for path_item in document["paths"].values():
        for operation in path_item.values():
            content = operation.get("requestBody", {}).get("content")
            if content:
                operation["requestBody"]["content"] = {"application/json": content["application/json"]}
    return document


schema = schemathesis.openapi.from_dict(_json_only_schema())
schema.app = get_wsgi_application()
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
COUNTS = {"calls": 0, "5xx": 0}


@pytest.fixture(autouse=True)
def _keep_the_test_connection(wsgi_keeps_test_connection):
    pass


@pytest.fixture
def token(staff):
    ledger.grant(user_id=staff.id, amount=1_000_000, reason="fuzzing")
    return bearer_client(staff)._credentials["HTTP_AUTHORIZATION"]


@pytest.mark.django_db
@pytest.mark.usefixtures("agent_costs")
@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.parametrize("authenticated", [True, False], ids=["jwt", "anonymous"])
def test_every_operation_with_and_without_a_jwt(case, authenticated, token, figures):
    headers = {"Authorization": token} if authenticated else {}
    response = case.call(headers=headers)
    COUNTS["calls"] += 1
    COUNTS["5xx"] += response.status_code >= 500
    case.validate_response(response, checks=CHECKS)


def test_zz_schema_fuzz_summary(figures):
    figures(f"schemathesis: {COUNTS['calls']} generated requests, 5xx {COUNTS['5xx']}")
    assert COUNTS["5xx"] == 0
